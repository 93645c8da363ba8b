"""The Azure OpenAI emulator's deployments: a name, the kind of model behind it, and the model
name its answers report.

Kinds, as Azure's models behave:

- ``completions``: a legacy completions model (gpt-35-turbo-instruct, davinci-002); chat on it is
  refused with ``OperationNotSupported``;
- ``chat``: a chat model (gpt-4o, gpt-4.1-mini); completions on it are refused the same way;
- ``reasoning``: a reasoning chat model (o-series, the gpt-5 family): chat, with
  ``reasoning_effort`` and reasoning tokens, refusing the sampling parameters such models refuse.

Configured through ``POST /_emulator/config`` ``{"deployments": {...}}`` and the emulator CLI's
``--deployment NAME=KIND:MODEL[:VERSION]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("completions", "chat", "reasoning")
# Tokens a prompt plus its answer may hold, by kind (the emulator's words, not real tokens).
CONTEXT_LENGTHS = {"completions": 4097, "chat": 128_000, "reasoning": 200_000}


@dataclass(frozen=True)
class Deployment:
    name: str
    kind: str
    model: str  # the model's name, as error messages name it: "gpt-4.1-mini"
    version: str | None = None  # the model version: answers report "gpt-4.1-mini-2025-04-14"

    @property
    def reported_model(self) -> str:
        return f"{self.model}-{self.version}" if self.version else self.model

    @property
    def is_chat(self) -> bool:
        return self.kind in ("chat", "reasoning")

    @property
    def context_length(self) -> int:
        return CONTEXT_LENGTHS[self.kind]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "version": self.version, "reports": self.reported_model}


DEFAULT_DEPLOYMENTS: dict[str, Deployment] = {d.name: d for d in (
    Deployment("gpt-35-turbo-instruct", "completions", "gpt-35-turbo-instruct"),  # legacy, retired on Azure
    Deployment("davinci-002", "completions", "davinci-002"),
    Deployment("gpt-4o", "chat", "gpt-4o", "2024-11-20"),
    Deployment("gpt-4.1-mini", "chat", "gpt-4.1-mini", "2025-04-14"),
    Deployment("gpt-5-mini", "reasoning", "gpt-5-mini", "2025-08-07"),
)}
_CHAT_MODELS = ("gpt-4", "gpt-35-turbo", "gpt-3.5-turbo")
_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")


def guess_kind(model: str) -> str:
    """The kind of a model given by name alone (``OpenAIServer(deployments={"name": "model"})``)."""
    if model.startswith(_REASONING_MODELS) and "chat" not in model:
        return "reasoning"
    if model.startswith(_CHAT_MODELS) and not model.endswith("instruct"):
        return "chat"
    return "completions"


def deployment(name: str, spec: Any) -> Deployment:
    """A deployment from its config: a model name (the kind guessed from it), a ``Deployment``, or
    ``{"kind", "model", "version"}`` (``model`` defaults to the name); ValueError when invalid."""
    if isinstance(spec, Deployment):
        return spec
    if isinstance(spec, str):
        return Deployment(name, guess_kind(spec), spec)
    if not isinstance(spec, dict) or set(spec) - {"kind", "model", "version"}:
        raise ValueError(f"deployment {name!r}: expected {{\"kind\", \"model\", \"version\"}}")
    kind, model, version = spec.get("kind"), spec.get("model", name), spec.get("version")
    if kind not in KINDS:
        raise ValueError(f"deployment {name!r}: kind must be one of {list(KINDS)}")
    if not isinstance(model, str) or not model or (version is not None and not isinstance(version, str)):
        raise ValueError(f"deployment {name!r}: model and version must be strings")
    return Deployment(name, kind, model, version or None)


def updated(current: dict[str, Deployment], changes: Any) -> dict[str, Deployment]:
    """``current`` with ``changes`` applied: ``{"name": {...}}`` adds or replaces a deployment,
    ``{"name": null}`` removes one; ``null`` for the whole set restores the defaults."""
    if changes is None:
        return dict(DEFAULT_DEPLOYMENTS)
    if not isinstance(changes, dict):
        raise ValueError("deployments must map names to {\"kind\", \"model\", \"version\"} (or null)")
    result = dict(current)
    for name, spec in changes.items():
        if not name or "/" in name:
            raise ValueError(f"invalid deployment name {name!r}")
        if spec is None:
            result.pop(name, None)
        else:
            result[name] = deployment(name, spec)
    return result


def parse_cli(value: str) -> Deployment:
    """``NAME=KIND:MODEL[:VERSION]`` (the emulator CLI's ``--deployment``)."""
    name, _, rest = value.partition("=")
    kind, _, model_version = rest.partition(":")
    model, _, version = model_version.partition(":")
    return deployment(name, {"kind": kind, "model": model or name, "version": version or None})

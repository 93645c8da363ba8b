"""Which backends may serve a request: those with the model it names, speaking an API that can serve it.

Each backend has a ``model``, the name callers use (its deployment's by default); a
request names one (the first backend's when it names none) and the pool routes
among the backends with that model as ever (priority, weight, failover). A chat
request cannot go to a deployment that speaks completions only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from ..config.backends import BackendSettings
from ..contract.bridge import prompts_of
from ..errors import AppError
from .knowledge import Knowledge
from .plan import Request

_SHOWABLE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def model_not_found(model: str) -> AppError:
    named = f"'{model}'" if _SHOWABLE.fullmatch(model) else "named"
    return AppError(404, "model_not_found", f"The model {named} does not exist here: GET /api/v1/models lists "
                                            "the models this app serves.", param="model")


def no_chat_deployment(model: str) -> AppError:
    return AppError(502, "upstream_misconfigured", f"No deployment of model '{model}' serves chat completions (each "
                    "speaks completions only): check AZURE_OPENAI_API or the backends' api in AZURE_OPENAI_BACKENDS.")


class Route(NamedTuple):
    model: str
    names: frozenset[str]  # the backends that may serve the request
    excluded: frozenset[str]  # the pool's others
    calls: int  # upstream calls an attempt may make at once (the concurrency slots it holds)
    tokens_needed: int  # what the request may generate, for the pool's headroom check

    @classmethod
    def for_request(cls, request: Request, backends: Sequence[BackendSettings], knowledge: Knowledge,
                    model: str | None) -> Route:
        model = model if model is not None else backends[0].model
        serving = [b for b in backends if b.model == model]
        if not serving:
            raise model_not_found(model)
        if request.operation == "chat":
            serving = [b for b in serving if knowledge.api(b) != "completions"]
            if not serving:
                raise no_chat_deployment(model)
        names = frozenset(b.name for b in serving)
        params = request.params
        choices = params.get("best_of") or params.get("n") or 1
        limit = params.get("max_tokens") or params.get("max_completion_tokens") or 16
        calls, prompts = 1, 1
        if request.operation == "completions":
            prompts = len(prompts_of(params))
            if any(knowledge.api(b) == "chat" for b in serving):
                calls = prompts
        return cls(model, names, frozenset(b.name for b in backends) - names, calls, limit * choices * prompts)

    def without(self, name: str) -> Route:
        return self._replace(names=self.names - {name}, excluded=self.excluded | {name})

    def check_servable(self, tried: set[str]) -> None:
        if not self.names:
            raise no_chat_deployment(self.model)

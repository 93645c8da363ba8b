"""Validate JSON against the Azure OpenAI REST specs (copies in tests/specs/azure-openai/).

The specs are OpenAPI 3.0; JSON Schema lacks ``nullable``, so it is rewritten as
a type union. One documented quirk is bridged: in 2023-05-15 a choice's
``logprobs`` is an object not marked nullable, while the spec's own example (and
the service) send ``null``; in 2024-10-21 ``ResponseFormatJsonSchema.json_schema``
requires a ``type`` it does not define (only ``name`` is kept required); a nullable
``enum`` admits null.

Chat completions are checked against 2024-10-21's ``createChatCompletionRequest`` /
``createChatCompletionResponse`` / ``createChatCompletionStreamResponse``. The preview
fields of the reasoning models (``reasoning_effort``, ``stream_options``, the ``developer``
role, as in 2025-04-01-preview) are not in that GA spec, and no copy of the preview spec
could be brought in (see tests/specs/azure-openai/README.md): ``chat_request_errors``
checks them by hand, by the preview spec's rules, and validates the rest against the GA
schema. Azure's stream annotation chunk (``object: ""``, no choices) is checked by hand too.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SPECS = Path(__file__).resolve().parents[1] / "specs" / "azure-openai"
VERSIONS = ("2023-05-15", "2024-10-21")
OPERATION = "/deployments/{deployment-id}/completions"
CHAT_VERSION = "2024-10-21"
REASONING_EFFORTS = ("minimal", "low", "medium", "high")  # 2025-04-01-preview: low|medium|high; gpt-5: minimal


def _nullable_to_union(node):
    if isinstance(node, dict):
        node = {k: _nullable_to_union(v) for k, v in node.items()}
        if node.pop("nullable", False):
            if isinstance(node.get("enum"), list) and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]  # a nullable enum admits null (OpenAPI 3.0)
            if "type" in node:
                node["type"] = [node["type"], "null"]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_union(v) for v in node]
    return node


@functools.cache
def _document(version: str) -> dict:
    doc = json.loads((SPECS / version / "inference.json").read_text())
    doc = _nullable_to_union(doc)
    if version == "2023-05-15":
        schema = doc["paths"][OPERATION]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        logprobs = schema["properties"]["choices"]["items"]["properties"]["logprobs"]
        logprobs["type"] = ["object", "null"]
    if version == "2024-10-21":  # json_schema lists "type" among its required keys; it has no such key
        doc["components"]["schemas"]["ResponseFormatJsonSchema"]["properties"]["json_schema"]["required"] = ["name"]
    return doc


def _validator(version: str, pointer: str) -> Draft7Validator:
    uri = f"urn:azure-openai:{version}"
    registry = Registry().with_resource(uri, Resource.from_contents(_document(version),
                                                                    default_specification=DRAFT7))
    return Draft7Validator({"$ref": f"{uri}#{pointer}"}, registry=registry)


def _operation_pointer(*parts: str) -> str:
    escaped = OPERATION.replace("~", "~0").replace("/", "~1")
    return "/paths/" + escaped + "/post/" + "/".join(parts)


def response_errors(version: str, body: dict) -> list[str]:
    """Schema violations of a 200 completions response (empty when valid)."""
    validator = _validator(version, _operation_pointer("responses", "200", "content", "application~1json", "schema"))
    return [error.message for error in validator.iter_errors(body)]


def error_errors(version: str, body: dict) -> list[str]:
    """Schema violations of an error response (the operation's ``default`` response)."""
    validator = _validator(version, _operation_pointer("responses", "default", "content", "application~1json",
                                                       "schema"))
    return [error.message for error in validator.iter_errors(body)]


def request_errors(version: str, body: dict) -> list[str]:
    """Schema violations of a completions request body."""
    validator = _validator(version, _operation_pointer("requestBody", "content", "application~1json", "schema"))
    return [error.message for error in validator.iter_errors(body)]


def example(version: str) -> dict:
    return copy.deepcopy(json.loads((SPECS / version / "examples" / "completions.json").read_text()))


def _schema_errors(version: str, name: str, body: object) -> list[str]:
    validator = _validator(version, f"/components/schemas/{name}")
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(body)]


def chat_request_errors(body: dict) -> list[str]:
    """Schema violations of a chat completions request: the preview-only fields by hand, the
    rest against the GA schema (a ``developer`` message is checked as a ``system`` one)."""
    errors: list[str] = []
    body = copy.deepcopy(body)
    effort = body.pop("reasoning_effort", None)
    if effort is not None and effort not in REASONING_EFFORTS:
        errors.append(f"reasoning_effort: {effort!r} is not one of {list(REASONING_EFFORTS)}")
    options = body.pop("stream_options", None)
    if options is not None:
        errors += _schema_errors(CHAT_VERSION, "chatCompletionStreamOptions", options)
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "developer":
            message["role"] = "system"
    return errors + _schema_errors(CHAT_VERSION, "createChatCompletionRequest", body)


def chat_response_errors(body: dict) -> list[str]:
    """Schema violations of a ``chat.completion`` answer."""
    return _schema_errors(CHAT_VERSION, "createChatCompletionResponse", body)


def chat_chunk_errors(chunk: dict) -> list[str]:
    """Schema violations of one streamed chat event: a ``chat.completion.chunk`` against the
    spec (its usage, when there is one, against ``completionUsage``), Azure's annotation chunk
    (``object: ""``: empty id and model, created 0, no choices, prompt filter results) by hand."""
    if chunk.get("object") == "":
        errors = [f"{key}: {chunk.get(key)!r} in an annotation chunk" for key, empty in
                  (("id", ""), ("model", ""), ("created", 0), ("choices", [])) if chunk.get(key) != empty]
        return errors + _schema_errors(CHAT_VERSION, "promptFilterResults", chunk.get("prompt_filter_results"))
    errors = _schema_errors(CHAT_VERSION, "createChatCompletionStreamResponse", chunk)
    if chunk.get("usage") is not None:
        errors += _schema_errors(CHAT_VERSION, "completionUsage", chunk["usage"])
    return errors

"""Validate JSON against the Azure OpenAI REST specs (copies in tests/specs/azure-openai/).

The specs are OpenAPI 3.0; JSON Schema lacks ``nullable``, so it is rewritten as
a type union. One documented quirk is bridged: in 2023-05-15 a choice's
``logprobs`` is an object not marked nullable, while the spec's own example (and
the service) send ``null``.
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


def _nullable_to_union(node):
    if isinstance(node, dict):
        node = {k: _nullable_to_union(v) for k, v in node.items()}
        if node.pop("nullable", False):
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

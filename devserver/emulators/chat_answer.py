"""Chat completions answers, shaped as Azure sends them (``chat.completion``, and the
``chat.completion.chunk`` events of a stream).

The text is the completions emulator's deterministic continuation of the last user message.
Reasoning deployments spend a deterministic number of reasoning tokens first (counted against
``max_completion_tokens``). ``response_format`` JSON modes answer a JSON object (for a schema,
its required properties filled with plausible values); tools are called when ``tool_choice``
asks for it, or (``auto``) when the last user message says "weather" or names a function.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from . import completion_text as textgen
from .content_filter import choice_results, prompt_results
from .deployments import Deployment

REASONING_TOKENS = {"minimal": 8, "low": 24, "medium": 64, "high": 160}
_ID_CHARS = string.ascii_letters + string.digits
_STRING_HINTS = (("location", "Seattle, WA"), ("city", "Seattle"), ("unit", "celsius"), ("date", "2025-01-01"),
                 ("email", "someone@example.com"), ("name", "Alex"), ("country", "US"), ("url", "https://example.com"))


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def reasoning_tokens(prompt: str, effort: str) -> int:
    return REASONING_TOKENS[effort] + _digest("reasoning", prompt)[0] % 16


def fill(schema: Any, name: str = "value", prompt: str = "") -> Any:
    """A plausible value for a JSON schema: objects get their required properties."""
    if not isinstance(schema, dict):
        return "example"
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return fill(schema[key][0], name, prompt)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: fill(properties.get(key, {}), key, prompt) for key in schema.get("required") or []}
    if kind == "array":
        return [fill(schema.get("items", {}), name, prompt) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        value = schema.get("minimum", 1)
        return int(value) if kind == "integer" else float(value) + 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    hint = next((value for key, value in _STRING_HINTS if key in name.lower()), None)
    if hint is not None:
        return hint
    words = textgen.tokens_of(textgen.CONTINUATIONS[_digest(name, prompt)[0] % len(textgen.CONTINUATIONS)])
    return "".join(words[:5]).strip()


def called_functions(request: dict) -> list[dict]:
    """The functions this request's answer calls (none: answer with text)."""
    functions, choice = request["functions"], request["tool_choice"]
    if not functions or choice == "none":
        return []
    if isinstance(choice, dict):
        return [f for f in functions if f["name"] == choice["name"]][:1]
    prompt = request["prompt"].lower()
    named = [f for f in functions if f["name"].lower() in prompt]
    if choice == "auto":
        if request["last_role"] == "tool":
            return []  # the follow-up after the tool's answer: text
        if not named and re.search(r"\bweather\b", prompt):
            named = [f for f in functions if "weather" in f["name"].lower()] or functions[:1]
    elif not named:
        named = functions[:1]
    return named if request["parallel_tool_calls"] else named[:1]


def _tool_call(function: dict, prompt: str, index: int, choice: int) -> dict:
    arguments = json.dumps(fill(function.get("parameters") or {"type": "object"}, function["name"], prompt))
    call_id = "call_" + _digest("call", prompt, function["name"], index, choice).hex()[:24]
    return {"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _token_logprob(token: str, top: int) -> dict:
    digest = _digest("logprob", token)
    chosen = -round(digest[0] / 128, 6)
    alternatives = [{"token": token, "logprob": chosen, "bytes": list(token.encode())}]
    for alt in textgen.VOCABULARY:
        if alt != token and len(alternatives) < top:
            logprob = round(chosen - 1 - digest[len(alternatives) % 32] / 64, 6)
            alternatives.append({"token": alt, "logprob": logprob, "bytes": list(alt.encode())})
    return {"token": token, "logprob": chosen, "bytes": list(token.encode()), "top_logprobs": alternatives[:top]}


@dataclass
class Choice:
    index: int
    content: str | None
    tokens: list[str]  # content tokens (one a stream chunk)
    finish_reason: str
    reasoning_tokens: int = 0
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list[dict] | None = None

    @property
    def completion_tokens(self) -> int:
        called = sum(textgen.count_tokens(c["function"]["arguments"]) + 1 for c in self.tool_calls)
        return len(self.tokens) + called + self.reasoning_tokens


def _content(request: dict, index: int, limit: int | None) -> tuple[str, str]:
    generated = textgen.generate(request["prompt"], choice=index, max_tokens=10 ** 6 if limit is None else limit,
                                 stop=request["stops"], temperature=request["temperature"],
                                 top_p=request["top_p"], seed=None, suffix=None)
    response_format = request["response_format"]
    if response_format is None:
        return generated.text, generated.finish_reason
    if response_format["type"] == "json_object":
        return json.dumps({"answer": generated.text.strip()}), "stop"
    schema = response_format["json_schema"].get("schema") or {"type": "object"}
    return json.dumps(fill(schema, response_format["json_schema"]["name"], request["prompt"])), "stop"


def choose(request: dict, deployment: Deployment, index: int) -> Choice:
    """One choice: tool calls, or text, after the reasoning tokens on a reasoning deployment."""
    limit = request["max_tokens"]
    reasoning = 0
    if deployment.kind == "reasoning":
        reasoning = reasoning_tokens(request["prompt"], request["reasoning_effort"])
        if limit is not None and limit <= reasoning:
            return Choice(index, "", [], "length", limit)  # the budget went on reasoning: no answer
        limit = None if limit is None else limit - reasoning
    functions = called_functions(request)
    if functions:
        calls = [_tool_call(f, request["prompt"], i, index) for i, f in enumerate(functions)]
        return Choice(index, None, [], "tool_calls", reasoning, calls)
    text, finish = _content(request, index, limit)
    tokens = textgen.tokens_of(text)
    logprobs = None
    if request["logprobs"] and deployment.kind == "chat":
        logprobs = [_token_logprob(token, request["top_logprobs"]) for token in tokens]
    return Choice(index, text, tokens, finish, reasoning, logprobs=logprobs)


@dataclass
class ChatAnswer:
    id: str
    created: int
    model: str
    fingerprint: str
    prompt_tokens: int
    choices: list[Choice]
    annotated: bool

    def usage(self) -> dict:
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "completion_tokens_details": {"reasoning_tokens": sum(c.reasoning_tokens for c in self.choices),
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
                                              "audio_tokens": 0},
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}}

    def response(self) -> dict:
        """The ``chat.completion`` body."""
        choices = []
        for choice in self.choices:
            message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
            if choice.tool_calls:
                message["tool_calls"] = choice.tool_calls
            body: dict[str, Any] = {"index": choice.index, "finish_reason": choice.finish_reason, "message": message,
                                    "logprobs": None if choice.logprobs is None else
                                    {"content": choice.logprobs, "refusal": None}}
            if self.annotated:
                body["content_filter_results"] = choice_results(chat=True)
            choices.append(body)
        response: dict[str, Any] = {"id": self.id, "object": "chat.completion", "created": self.created,
                                    "model": self.model, "system_fingerprint": self.fingerprint, "choices": choices,
                                    "usage": self.usage()}
        if self.annotated:
            response["prompt_filter_results"] = prompt_results(1)
        return response

    def chunks(self, include_usage: bool) -> list[dict]:
        """The stream's events, ``[DONE]`` aside: Azure's prompt annotation, then per choice a role
        chunk, a chunk per token (or the tool calls: name, then argument fragments), a last chunk
        with ``finish_reason``; and the usage chunk when asked for."""
        extra = {"usage": None} if include_usage else {}
        events: list[dict] = []
        if self.annotated:
            events.append({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                           "prompt_filter_results": prompt_results(1), **extra})

        def chunk(choice: Choice, delta: dict, finish: str | None = None, logprobs: Any = None) -> dict:
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "system_fingerprint": self.fingerprint, "choices": [
                        {"index": choice.index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                    **extra}

        for choice in self.choices:
            events.append(chunk(choice, {"role": "assistant", "content": "" if choice.content is not None else None,
                                         "refusal": None}))
            for position, call in enumerate(choice.tool_calls):
                events.append(chunk(choice, {"tool_calls": [{"index": position, "id": call["id"], "type": "function",
                                                             "function": {"name": call["function"]["name"],
                                                                          "arguments": ""}}]}))
                for fragment in textgen.tokens_of(call["function"]["arguments"]):
                    events.append(chunk(choice, {"tool_calls": [{"index": position,
                                                                 "function": {"arguments": fragment}}]}))
            for position, token in enumerate(choice.tokens):
                logprobs = None if choice.logprobs is None else {"content": [choice.logprobs[position]],
                                                                 "refusal": None}
                events.append(chunk(choice, {"content": token}, logprobs=logprobs))
            last = chunk(choice, {}, choice.finish_reason)
            if self.annotated:
                last["choices"][0]["content_filter_results"] = choice_results(chat=True)
            events.append(last)
        if include_usage:
            events.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "system_fingerprint": self.fingerprint, "choices": [],
                           "usage": self.usage()})
        return events


def answer(request: dict, deployment: Deployment, annotated: bool) -> ChatAnswer:
    return ChatAnswer(
        id="chatcmpl-" + "".join(secrets.choice(_ID_CHARS) for _ in range(29)), created=int(time.time()),
        model=deployment.reported_model, fingerprint="fp_" + _digest(deployment.reported_model).hex()[:10],
        prompt_tokens=request["prompt_tokens"],
        choices=[choose(request, deployment, index) for index in range(request["n"])], annotated=annotated)

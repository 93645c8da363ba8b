"""An Azure OpenAI *completions* emulator speaking the data-plane REST protocol.

``POST /openai/deployments/{deployment-id}/completions?api-version=...`` as in the
Azure REST spec (2023-05-15 and 2024-10-21 ``inference.json``): the same auth
(``api-key`` header, or ``Authorization: Bearer`` with a token from the identity
emulator), the same validation and error bodies, and spec-valid responses.

Control API on the same server, relied on by tests and benchmarks:
``POST /_emulator/faults`` (a JSON list, served to the next completion requests
in order, one each), ``GET /_emulator/stats``, ``POST /_emulator/reset``, and
``POST /_emulator/config`` (``latency_ms``, ``content_filter_phrase``, and the
per-minute quotas ``rpm`` / ``tpm``: see ``quota.py``).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote

from . import completion_text as textgen
from .control import ControlHandler
from .faults import Fault, FaultQueue, Sleeper
from .httpserver import Server
from .identity import IdentityState
from .quota import Quotas, estimate_tokens
from .tokens import COGNITIVE_SERVICES, TokenSigner

DEFAULT_DEPLOYMENTS = {
    "gpt-35-turbo-instruct": "gpt-35-turbo-instruct",
    "davinci-002": "davinci-002",
    "gpt-4o": "gpt-4o",  # a chat model: completions on it fail as on Azure
}
CHAT_ONLY_MODELS = {"gpt-4o"}
CONTEXT_LENGTH = 4097
DEFAULT_CONTENT_FILTER_PHRASE = "trip the content filter"
# api-versions this emulator answers; from 2023-06-01-preview on, responses carry
# content-filter annotations.
API_VERSIONS = ("2022-12-01", "2023-05-15", "2023-06-01-preview", "2023-12-01-preview",
                "2024-02-01", "2024-06-01", "2024-10-21", "2025-01-01-preview")
FILTER_ANNOTATIONS_SINCE = "2023-06-01-preview"
ROUTE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/completions/?$")
AUDIENCES = {COGNITIVE_SERVICES, COGNITIVE_SERVICES + "/"}

_SAFE = {"filtered": False, "severity": "safe"}
_UNDETECTED = {"filtered": False, "detected": False}


def _severities(**overrides: dict) -> dict:
    result = {name: dict(_SAFE) for name in ("hate", "self_harm", "sexual", "violence")}
    result.update(overrides)
    return result


def _error(code: str, message: str, param: str | None = None,
           type_: str | None = None, **extra: Any) -> dict:
    error: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    if type_ is not None:
        error["type"] = type_
    error.update(extra)
    return {"error": error}


class RequestInvalid(Exception):
    def __init__(self, message: str, param: str | None = None, code: str = "BadRequest"):
        super().__init__(message)
        self.body = _error(code, message, param, "invalid_request_error")


# -- request validation, as the spec's createCompletionRequest says ------------
_INT_RANGES = {"best_of": (0, 20), "logprobs": (0, 5), "max_tokens": (0, None), "n": (1, 128),
               "seed": (-(2 ** 63), 2 ** 63 - 1)}
_NUMBER_RANGES = {"temperature": (0, 2), "top_p": (0, 1),
                  "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
_BOOLS = ("echo", "stream")
_STRINGS = ("suffix", "user", "model")
KNOWN_FIELDS = {"prompt", "stop", "logit_bias", *_INT_RANGES, *_NUMBER_RANGES, *_BOOLS, *_STRINGS}


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise RequestInvalid(f"{value} is less than the minimum of {low} - '{name}'", name)
    if high is not None and value > high:
        raise RequestInvalid(f"{value} is greater than the maximum of {high} - '{name}'", name)


def validate_request(body: Any) -> dict:
    """The request with defaults applied, or RequestInvalid as the service words it."""
    if not isinstance(body, dict):
        raise RequestInvalid("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestInvalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if "prompt" not in body:
        raise RequestInvalid("'prompt' is a required property", "prompt")
    for name, (low, high) in _INT_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int:
            raise RequestInvalid(f"{json.dumps(value)} is not of type 'integer' - '{name}'", name)
        _check_range(name, value, low, high)
    for name, (low, high) in _NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_finite_number(value):
            raise RequestInvalid(f"{json.dumps(value)} is not of type 'number' - '{name}'", name)
        _check_range(name, value, low, high)
    for name in _BOOLS:
        if body.get(name) is not None and type(body[name]) is not bool:
            raise RequestInvalid(f"{json.dumps(body[name])} is not of type 'boolean' - '{name}'", name)
    for name in _STRINGS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise RequestInvalid(f"{json.dumps(body[name])} is not of type 'string' - '{name}'", name)

    prompt = body["prompt"]
    if prompt is None:
        prompts = ["<|endoftext|>"]
    elif isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        if not 1 <= len(prompt) <= 2048:
            raise RequestInvalid("'prompt' must hold between 1 and 2048 strings", "prompt")
        prompts = list(prompt)
    else:
        raise RequestInvalid(f"{json.dumps(prompt)[:60]} is not valid under any of the given schemas - 'prompt'",
                             "prompt")

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if not 1 <= len(stop) <= 4:
            raise RequestInvalid(f"{json.dumps(stop)[:60]} is not valid under any of the given schemas - 'stop'",
                                 "stop")
        stops = list(stop)
    else:
        raise RequestInvalid(f"{json.dumps(stop)[:60]} is not valid under any of the given schemas - 'stop'", "stop")
    stops = [s for s in stops if s]

    logit_bias = body.get("logit_bias")
    if logit_bias is not None:
        if not isinstance(logit_bias, dict):
            raise RequestInvalid(f"{json.dumps(logit_bias)[:60]} is not of type 'object' - 'logit_bias'",
                                 "logit_bias")
        for token, bias in logit_bias.items():
            if not token.isdigit():
                raise RequestInvalid(f"Invalid key in 'logit_bias': {token}.", "logit_bias")
            if type(bias) is not int or not -100 <= bias <= 100:
                raise RequestInvalid(f"Invalid value for 'logit_bias': {json.dumps(bias)}; "
                                     "expected an integer from -100 to 100.", "logit_bias")

    n = body.get("n") or 1
    best_of = body.get("best_of")
    if best_of is not None and best_of < n:
        raise RequestInvalid("best_of must be greater than or equal to n.", "best_of")
    if body.get("stream") and best_of is not None and best_of > 1:
        raise RequestInvalid("Cannot stream results when best_of is greater than 1.", "stream")

    max_tokens = 16 if body.get("max_tokens") is None else body["max_tokens"]
    return {
        "prompts": prompts, "stops": stops, "n": n, "best_of": best_of or n, "max_tokens": max_tokens,
        "temperature": 1 if body.get("temperature") is None else body["temperature"],
        "top_p": 1 if body.get("top_p") is None else body["top_p"],
        "seed": body.get("seed"), "suffix": body.get("suffix"), "echo": bool(body.get("echo")),
        "logprobs": body.get("logprobs"), "stream": bool(body.get("stream")),
    }


# -- state -------------------------------------------------------------------
class OpenAIState:
    def __init__(self, *, api_key: str, deployments: dict[str, str], signer: TokenSigner,
                 latency_ms: int, identity: IdentityState | None,
                 content_filter_phrase: str = DEFAULT_CONTENT_FILTER_PHRASE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api_key = api_key
        self.deployments = deployments
        self.signer = signer
        self.latency_ms = latency_ms
        self.identity = identity
        self.content_filter_phrase = content_filter_phrase
        self.faults = FaultQueue()
        self.sleeper = Sleeper()
        self.quotas = Quotas(clock=clock)  # unlimited until configured
        self._lock = threading.Lock()
        self.received = 0  # completion requests that arrived (answered or not yet)
        self.by_status: Counter[str] = Counter()
        self.auth_modes: Counter[str] = Counter()
        self.bearer_tokens: set[str] = set()
        self.last_client_request_id: str | None = None

    def count(self, status: int | str) -> None:
        with self._lock:
            self.by_status[str(status)] += 1

    def arrived(self) -> None:
        with self._lock:
            self.received += 1

    def saw(self, auth_mode: str, token: str | None, client_request_id: str | None) -> None:
        with self._lock:
            self.auth_modes[auth_mode] += 1
            if token:
                self.bearer_tokens.add(token)
            if client_request_id:
                self.last_client_request_id = client_request_id

    def snapshot(self) -> dict:
        with self._lock:
            stats = {
                "completion_requests": self.received,
                "requests_by_status": dict(self.by_status),
                "auth_modes": dict(self.auth_modes),
                "distinct_bearer_tokens": len(self.bearer_tokens),
                "last_client_request_id": self.last_client_request_id,
                "faults_pending": len(self.faults),
                "latency_ms": self.latency_ms,
            }
        stats.update(self.quotas.snapshot())
        if self.identity is not None:
            identity = self.identity.snapshot()
            stats["tokens_issued"] = identity["tokens_issued"]
            stats["tokens_by_client_id"] = identity["tokens_by_client_id"]
        return stats

    def configure(self, changes: dict) -> dict:
        if set(changes) - {"latency_ms", "content_filter_phrase", "rpm", "tpm", "quota_window_s"}:
            raise ValueError("config takes latency_ms, content_filter_phrase, rpm, tpm and quota_window_s")
        latency = changes.get("latency_ms", self.latency_ms)
        phrase = changes.get("content_filter_phrase", self.content_filter_phrase)
        if type(latency) is not int or latency < 0:
            raise ValueError("latency_ms must be an integer >= 0")
        if not isinstance(phrase, str) or not phrase:
            raise ValueError("content_filter_phrase must be a non-empty string")
        self.quotas.set_limits(changes.get("rpm", self.quotas.rpm), changes.get("tpm", self.quotas.tpm),
                               changes.get("quota_window_s"))
        self.latency_ms, self.content_filter_phrase = latency, phrase
        return {"latency_ms": latency, "content_filter_phrase": phrase, "rpm": self.quotas.rpm,
                "tpm": self.quotas.tpm, "quota_window_s": self.quotas.window}

    def reset(self) -> None:
        self.faults.clear()
        self.sleeper.interrupt()
        self.quotas.reset()
        with self._lock:
            self.received = 0
            self.by_status.clear()
            self.auth_modes.clear()
            self.bearer_tokens.clear()
            self.last_client_request_id = None
        if self.identity is not None:
            self.identity.reset()


_FAULT_ERRORS = {
    409: ("Conflict", "The request conflicts with the current state of the deployment. Try again."),
    500: ("InternalServerError", "The server had an error while processing your request. Sorry about that!"),
    502: ("BadGateway", "Bad gateway."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request. Please try again later."),
    504: ("GatewayTimeout", "The operation timed out."),
}


def _sized_body(size: int) -> tuple[Iterator[bytes], int]:
    """A completion-shaped JSON body of exactly ``size`` bytes (at least the frame's), produced
    in 64 KiB pieces rather than held in memory."""
    head, tail = b'{"choices": [{"index": 0, "text": "', b'"}], "usage": {}}'
    filler = max(0, size - len(head) - len(tail))

    def pieces() -> Iterator[bytes]:
        yield head
        left = filler
        while left:
            step = min(left, 65536)
            yield b"x" * step
            left -= step
        yield tail

    return pieces(), len(head) + filler + len(tail)


class OpenAIHandler(ControlHandler):
    state: OpenAIState  # set on the subclass built by OpenAIServer

    # -- routing -----------------------------------------------------------
    def do_GET(self) -> None:
        if self.is_control():
            return self.serve_control()
        self._not_found()

    def do_POST(self) -> None:
        if self.is_control():
            return self.serve_control()
        url = self.url()
        route = ROUTE.match(url.path)
        if route is None:
            return self._not_found()
        self._completions(unquote(route["deployment"]), parse_qs(url.query))

    def _not_found(self) -> None:
        self.send_json(404, _error("404", "Resource not found"))

    def _reply(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self.state.count(status)
        all_headers = {"apim-request-id": str(uuid.uuid4()), "x-ms-region": "Emulator", **self.quota_headers}
        all_headers.update(headers or {})
        self.send_json(status, payload, all_headers)

    # -- the completions operation ----------------------------------------
    quota_headers: dict[str, str] = {}  # x-ratelimit-remaining-* for this request's answer, once known

    def _completions(self, deployment: str, query: dict[str, list[str]]) -> None:
        self.state.arrived()
        self.drip = None
        self.quota_headers = {}
        try:
            raw_body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self._reply(400, _error("BadRequest", "Invalid request body framing."))
        fault, over = self.take_fault()
        if over or (fault is not None and self._serve_fault(fault, query)):
            return

        auth_error = self._authenticate()
        if auth_error is not None:
            return self._reply(401, auth_error)
        api_version = query.get("api-version", [None])[0]
        if api_version is None:
            return self._reply(404, _error("404", "Resource not found"))
        if api_version not in API_VERSIONS:
            return self._reply(400, _error("BadRequest", "API version not supported"))
        model = self.state.deployments.get(deployment)
        if model is None:
            return self._reply(404, _error(
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again."))
        self.quota_headers = self.state.quotas.peek(deployment).headers()
        try:
            request = validate_request(json.loads(raw_body))
        except ValueError:
            return self._reply(400, _error("BadRequest", "We could not parse the JSON body of your request.",
                                           None, "invalid_request_error"))
        except RequestInvalid as exc:
            return self._reply(400, exc.body)
        if model in CHAT_ONLY_MODELS:
            return self._reply(400, _error(
                "OperationNotSupported",
                f"The completion operation does not work with the specified model, {model}. "
                "Please choose different model and try again."))
        estimate = estimate_tokens([textgen.count_tokens(p) for p in request["prompts"]],
                                   request["max_tokens"], request["best_of"])
        admission = self.state.quotas.admit(deployment, estimate)
        self.quota_headers = admission.headers()
        if not admission.admitted:
            return self._reply(429, admission.body(api_version))

        if not self.state.sleeper.sleep(self.state.latency_ms / 1000):
            return self.drop_connection()
        requested = max(textgen.count_tokens(p) for p in request["prompts"]) + request["max_tokens"]
        if requested > CONTEXT_LENGTH:
            return self._reply(400, _error(
                "context_length_exceeded",
                f"This model's maximum context length is {CONTEXT_LENGTH} tokens, however you requested "
                f"{requested} tokens. Please reduce your prompt; or completion length.",
                "prompt", "invalid_request_error"))
        if any(self.state.content_filter_phrase.lower() in p.lower() for p in request["prompts"]):
            return self._reply(400, self._content_filter_error())

        annotated = api_version >= FILTER_ANNOTATIONS_SINCE
        response = self._complete(model, request, annotated)
        if request["stream"]:
            return self._stream(response, annotated)
        self._reply(200, response)

    def _serve_fault(self, fault: Fault, query: dict) -> bool:
        """Answer with an injected fault (its drop and delay already applied); False when the
        request should then be answered normally."""
        if fault.drip_ms:
            self.drip = (fault.drip_ms / 1000, self.state.sleeper.sleep)
        headers: dict[str, str] = dict(fault.headers)
        if fault.retry_after is not None:
            headers["retry-after"] = str(math.ceil(fault.retry_after))
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        if fault.size is not None:
            self.state.count(fault.status or 200)
            pieces, length = _sized_body(fault.size)
            self.send_stream(fault.status or 200, pieces, "application/json", headers,
                             length=None if fault.chunked else length)
            return True
        if fault.status is None and fault.raw is None:
            return False
        status = fault.status or 200
        if fault.raw is not None:
            self.state.count(status)
            self.send(status, fault.raw, headers.pop("Content-Type", "application/json"), headers)
            return True
        if status == 429:
            wait = fault.retry_after if fault.retry_after is not None else 1
            version = query.get("api-version", ["?"])[0]
            body = _error("429", f"Requests to the Completions_Create Operation under Azure OpenAI API "
                                 f"version {version} have exceeded token rate limit of your current OpenAI "
                                 f"S0 pricing tier. Please retry after {math.ceil(wait)} second.")
            headers.setdefault("x-ratelimit-remaining-requests", "0")
        else:
            code, message = _FAULT_ERRORS.get(status, (str(status), "Injected failure."))
            body = _error(code, message)
        self._reply(status, body, headers)
        return True

    def _authenticate(self) -> dict | None:
        """None when the caller is authenticated, else Azure's 401 body."""
        state = self.state
        client_request_id = self.headers.get("X-Request-Id")
        key = self.headers.get("api-key")
        authorization = self.headers.get("Authorization", "")
        if key is not None:
            state.saw("both" if authorization else "api-key", None, client_request_id)
            if secrets.compare_digest(key.encode(), state.api_key.encode()):
                return None
            return _error("401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                                 "to provide a valid key for an active subscription and use a correct regional "
                                 "API endpoint for your resource.")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
            state.saw("bearer", token, client_request_id)
            claims = state.signer.verify(token)
            if claims is not None and claims.audience in AUDIENCES and claims.expires_on > time.time():
                return None
            return _error("401", "Unauthorized. Access token is missing, invalid, audience is incorrect "
                                 "(https://cognitiveservices.azure.com), or have expired.")
        state.saw("none", None, client_request_id)
        return _error("401", "Access denied due to missing subscription key. Make sure to include subscription "
                             "key when making requests to an API.")

    def _content_filter_error(self) -> dict:
        return _error(
            "content_filter",
            "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
            "Please modify your prompt and retry. To learn more about our content filtering policies please read "
            "our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
            "prompt", "invalid_request_error", status=400,
            innererror={"code": "ResponsibleAIPolicyViolation",
                        "content_filter_result": _severities(
                            violence={"filtered": True, "severity": "high"},
                            jailbreak=dict(_UNDETECTED))})

    def _complete(self, model: str, request: dict, annotated: bool) -> dict:
        choices = []
        completion_tokens = 0
        for prompt in request["prompts"]:
            for candidate in range(request["best_of"]):
                generated = textgen.generate(
                    prompt, choice=candidate, max_tokens=request["max_tokens"], stop=request["stops"],
                    temperature=request["temperature"], top_p=request["top_p"],
                    seed=request["seed"], suffix=request["suffix"])
                completion_tokens += len(generated.tokens)
                if candidate >= request["n"]:
                    continue  # best_of: generated (and billed) but not returned
                tokens = generated.tokens
                text = generated.text
                offset = len(prompt)
                if request["echo"]:
                    tokens = textgen.tokens_of(prompt) + tokens
                    text = prompt + text
                    offset = 0
                choice = {
                    "text": text, "index": len(choices), "finish_reason": generated.finish_reason,
                    "logprobs": (None if request["logprobs"] is None
                                 else textgen.logprobs_for(tokens, offset, request["logprobs"])),
                }
                if annotated:
                    choice["content_filter_results"] = _severities()
                choices.append(choice)
        prompt_tokens = sum(max(1, textgen.count_tokens(p)) for p in request["prompts"])
        response: dict[str, Any] = {
            "id": "cmpl-" + secrets.token_hex(14), "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if annotated:
            response["prompt_filter_results"] = [
                {"prompt_index": i, "content_filter_results": _severities(jailbreak=dict(_UNDETECTED))}
                for i in range(len(request["prompts"]))]
        return response

    def _stream(self, response: dict, annotated: bool) -> None:
        """Server-sent events, one per token, ending with ``data: [DONE]``."""
        head = {k: response[k] for k in ("id", "object", "created", "model")}
        events = []
        if annotated:
            events.append({**head, "choices": [], "prompt_filter_results": response["prompt_filter_results"]})
        for choice in response["choices"]:
            for token in textgen.tokens_of(choice["text"]):
                events.append({**head, "choices": [{"text": token, "index": choice["index"],
                                                    "finish_reason": None, "logprobs": None}]})
            final = {"text": "", "index": choice["index"], "finish_reason": choice["finish_reason"],
                     "logprobs": None}
            if annotated:
                final["content_filter_results"] = choice["content_filter_results"]
            events.append({**head, "choices": [final]})
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self.state.count(200)
        self.send(200, body.encode(), "text/event-stream", {"apim-request-id": str(uuid.uuid4()),
                                                             "Cache-Control": "no-cache", **self.quota_headers})


class OpenAIServer(Server):
    """The completions emulator on its own port; ``endpoint`` is what
    ``AZURE_OPENAI_ENDPOINT`` must hold."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 deployments: dict[str, str] | None = None, signer: TokenSigner | None = None,
                 latency_ms: int = 0, identity: IdentityState | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` (monotonic seconds) times the quota windows; tests pass their own."""
        self.state = OpenAIState(
            api_key=api_key or secrets.token_hex(16), deployments=dict(deployments or DEFAULT_DEPLOYMENTS),
            signer=signer or (identity.signer if identity else TokenSigner()), latency_ms=latency_ms,
            identity=identity, clock=clock)
        handler = type("BoundOpenAIHandler", (OpenAIHandler,), {"state": self.state})
        super().__init__((host, port), handler)

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/"

    @property
    def api_key(self) -> str:
        return self.state.api_key

    def stop(self) -> None:
        self.state.sleeper.interrupt()  # release requests sleeping on latency or a delay fault
        super().stop()

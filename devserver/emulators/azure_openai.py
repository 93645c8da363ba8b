"""An Azure OpenAI emulator speaking the data-plane REST protocol: completions and chat completions.

``POST /openai/deployments/{deployment-id}/completions?api-version=...`` and
``.../chat/completions?api-version=...`` as in the Azure REST spec: the same auth (``api-key``
header, or ``Authorization: Bearer`` with a token from the identity emulator), the same validation
and error bodies, spec-valid responses, and streams (``stream: true``) as Azure sends them. Each
deployment has a kind (``deployments.py``): completions on a chat model, or chat on a completions
model, is refused as Azure refuses it; reasoning models refuse what they refuse (``chat_request.py``).

Control API on the same server, relied on by tests and benchmarks:
``POST /_emulator/faults`` (a JSON list, served to the next requests in order, one each),
``GET /_emulator/stats``, ``POST /_emulator/reset``, and ``POST /_emulator/config`` (``GET``: the
configuration): ``latency_ms``, ``content_filter_phrase``, the per-minute quotas ``rpm`` / ``tpm``
(``quota.py``), ``stream_chunk_ms`` (the pause between streamed events) and ``deployments``.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

from . import chat_answer
from . import completion_text as textgen
from .chat_request import text_of, validate_chat
from .content_filter import choice_results, prompt_results, refusal
from .control import ControlHandler
from .deployments import DEFAULT_DEPLOYMENTS, Deployment
from .deployments import deployment as make_deployment
from .deployments import updated as updated_deployments
from .faults import Fault, FaultQueue, Sleeper
from .httpserver import Server
from .identity import IdentityState
from .quota import Quotas, estimate_tokens
from .streaming import StreamStats, send_stream
from .tokens import COGNITIVE_SERVICES, TokenSigner
from .validation import RequestInvalid, check_logit_bias, check_types, loads, stop_sequences
from .validation import error as _error

CONTEXT_LENGTH = 4097
RECENT = 50  # request bodies kept for the stats (the tests read what the app sent)
DEFAULT_CONTENT_FILTER_PHRASE = "trip the content filter"
# api-versions this emulator answers; from 2023-06-01-preview on, responses carry
# content-filter annotations.
API_VERSIONS = ("2022-12-01", "2023-05-15", "2023-06-01-preview", "2023-12-01-preview",
                "2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview",
                "2025-02-01-preview", "2025-03-01-preview", "2025-04-01-preview")
FILTER_ANNOTATIONS_SINCE = "2023-06-01-preview"
ROUTE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<operation>completions|chat/completions)/?$")
AUDIENCES = {COGNITIVE_SERVICES, COGNITIVE_SERVICES + "/"}
OPERATION_NOT_SUPPORTED = (
    "The {operation} operation does not work with the specified model, {model}. Please choose different model and "
    "try again. You can learn more about which models can be used with each operation here: "
    "https://go.microsoft.com/fwlink/?linkid=2197993.")
RECENT_BODY_BYTES = 256 * 1024  # larger request bodies show in the stats by size only
CONFIG_KEYS = ("latency_ms", "content_filter_phrase", "rpm", "tpm", "quota_window_s", "stream_chunk_ms",
               "deployments")


# -- request validation, as the spec's createCompletionRequest says ------------
_INT_RANGES = {"best_of": (0, 20), "logprobs": (0, 5), "max_tokens": (0, None), "n": (1, 128),
               "seed": (-(2 ** 63), 2 ** 63 - 1)}
_NUMBER_RANGES = {"temperature": (0, 2), "top_p": (0, 1),
                  "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
_BOOLS = ("echo", "stream")
_STRINGS = ("suffix", "user", "model")
KNOWN_FIELDS = {"prompt", "stop", "logit_bias", *_INT_RANGES, *_NUMBER_RANGES, *_BOOLS, *_STRINGS}


def validate_request(body: Any) -> dict:
    """The request with defaults applied, or RequestInvalid as the service words it."""
    if not isinstance(body, dict):
        raise RequestInvalid("The request body must be a JSON object.")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestInvalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    if "prompt" not in body:
        raise RequestInvalid("'prompt' is a required property", "prompt")
    check_types(body, _INT_RANGES, _NUMBER_RANGES, _BOOLS, _STRINGS)

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

    stops = stop_sequences(body.get("stop"))
    check_logit_bias(body.get("logit_bias"))

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
    def __init__(self, *, api_key: str, deployments: dict[str, Deployment], signer: TokenSigner,
                 latency_ms: int, identity: IdentityState | None,
                 content_filter_phrase: str = DEFAULT_CONTENT_FILTER_PHRASE,
                 clock: Callable[[], float] = time.monotonic, stream_chunk_ms: int = 0) -> None:
        self.api_key = api_key
        self.deployments = deployments
        self.signer = signer
        self.latency_ms = latency_ms
        self.stream_chunk_ms = stream_chunk_ms
        self.identity = identity
        self.content_filter_phrase = content_filter_phrase
        self.faults = FaultQueue()
        self.sleeper = Sleeper()
        self.quotas = Quotas(clock=clock)  # unlimited until configured
        self.streams = StreamStats()
        self._lock = threading.Lock()
        self.received = 0  # completion requests that arrived (answered or not yet)
        self.chat_received = 0  # chat completion requests likewise
        self.by_deployment: Counter[tuple[str, str]] = Counter()  # (deployment, "completions" | "chat")
        self.by_status: Counter[str] = Counter()
        self.auth_modes: Counter[str] = Counter()
        self.bearer_tokens: set[str] = set()
        self.last_client_request_id: str | None = None
        self.recent: deque[dict] = deque(maxlen=RECENT)  # the last requests' bodies, for tests to read

    def count(self, status: int | str) -> None:
        with self._lock:
            self.by_status[str(status)] += 1

    def arrived(self, deployment: str = "", chat: bool = False) -> None:
        with self._lock:
            if chat:
                self.chat_received += 1
            else:
                self.received += 1
            self.by_deployment[deployment, "chat" if chat else "completions"] += 1

    def received_body(self, deployment: str, chat: bool, body: bytes) -> None:
        try:  # (kept for the stats: large bodies are not)
            document = json.loads(body) if len(body) <= RECENT_BODY_BYTES else {"size": len(body)}
        except (ValueError, RecursionError):
            document = None
        with self._lock:
            self.recent.append({"deployment": deployment, "operation": "chat" if chat else "completions",
                                "body": document})

    def saw(self, auth_mode: str, token: str | None, client_request_id: str | None) -> None:
        with self._lock:
            self.auth_modes[auth_mode] += 1
            if token:
                self.bearer_tokens.add(token)
            if client_request_id:
                self.last_client_request_id = client_request_id

    def snapshot(self) -> dict:
        with self._lock:
            by_deployment: dict[str, dict[str, int]] = {}
            for (name, operation), number in sorted(self.by_deployment.items()):
                by_deployment.setdefault(name, {})[operation] = number
            stats = {
                "completion_requests": self.received,
                "chat_requests": self.chat_received,
                "requests_by_deployment": by_deployment,
                "requests_by_status": dict(self.by_status),
                "auth_modes": dict(self.auth_modes),
                "distinct_bearer_tokens": len(self.bearer_tokens),
                "last_client_request_id": self.last_client_request_id,
                "recent_requests": list(self.recent),
                "faults_pending": len(self.faults),
                "latency_ms": self.latency_ms,
                "stream_chunk_ms": self.stream_chunk_ms,
                "deployments": {name: d.describe() for name, d in self.deployments.items()},
            }
        stats.update(self.quotas.snapshot())
        stats.update(self.streams.snapshot())
        if self.identity is not None:
            identity = self.identity.snapshot()
            stats["tokens_issued"] = identity["tokens_issued"]
            stats["tokens_by_client_id"] = identity["tokens_by_client_id"]
        return stats

    def configure(self, changes: dict) -> dict:
        """Apply ``changes`` (all or nothing; keys left out keep their value); the configuration."""
        if set(changes) - set(CONFIG_KEYS):
            raise ValueError(f"config takes {', '.join(CONFIG_KEYS)}")
        latency = changes.get("latency_ms", self.latency_ms)
        chunk_ms = changes.get("stream_chunk_ms", self.stream_chunk_ms)
        phrase = changes.get("content_filter_phrase", self.content_filter_phrase)
        for name, value in (("latency_ms", latency), ("stream_chunk_ms", chunk_ms)):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        if not isinstance(phrase, str) or not phrase:
            raise ValueError("content_filter_phrase must be a non-empty string")
        deployments = (updated_deployments(self.deployments, changes["deployments"]) if "deployments" in changes
                       else self.deployments)
        self.quotas.set_limits(changes.get("rpm", self.quotas.rpm), changes.get("tpm", self.quotas.tpm),
                               changes.get("quota_window_s"))
        self.latency_ms, self.stream_chunk_ms, self.content_filter_phrase = latency, chunk_ms, phrase
        self.deployments = deployments
        return {"latency_ms": latency, "content_filter_phrase": phrase, "rpm": self.quotas.rpm,
                "tpm": self.quotas.tpm, "quota_window_s": self.quotas.window, "stream_chunk_ms": chunk_ms,
                "deployments": {name: d.describe() for name, d in deployments.items()}}

    def reset(self) -> None:
        self.faults.clear()
        self.sleeper.interrupt()
        self.quotas.reset()
        self.streams.reset()
        with self._lock:
            self.received = 0
            self.chat_received = 0
            self.by_deployment.clear()
            self.by_status.clear()
            self.auth_modes.clear()
            self.bearer_tokens.clear()
            self.last_client_request_id = None
            self.recent.clear()
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
        self._operation(unquote(route["deployment"]), parse_qs(url.query), chat=route["operation"] != "completions")

    def _not_found(self) -> None:
        self.send_json(404, _error("404", "Resource not found"))

    def _reply(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self.state.count(status)
        all_headers = {"apim-request-id": str(uuid.uuid4()), "x-ms-region": "Emulator", **self.quota_headers}
        all_headers.update(headers or {})
        self.send_json(status, payload, all_headers)

    # -- what both operations share ----------------------------------------------
    quota_headers: dict[str, str] = {}  # x-ratelimit-remaining-* for this request's answer, once known
    stream_fault: Fault | None = None  # this request's mid-stream fault, if it streams

    def _operation(self, name: str, query: dict[str, list[str]], chat: bool) -> None:
        """Framing, injected faults, auth, api-version and deployment, then the operation."""
        self.state.arrived(name, chat)
        self.drip = None
        self.quota_headers = {}
        try:
            raw_body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self._reply(400, _error("BadRequest", "Invalid request body framing."))
        self.state.received_body(name, chat, raw_body)
        fault, over = self.take_fault()
        if over or (fault is not None and self._serve_fault(fault, query, "ChatCompletions_Create" if chat
                                                            else "Completions_Create")):
            return
        self.stream_fault = fault if fault is not None and fault.stream else None

        auth_error = self._authenticate()
        if auth_error is not None:
            return self._reply(401, auth_error)
        api_version = query.get("api-version", [None])[0]
        if api_version is None:
            return self._reply(404, _error("404", "Resource not found"))
        if api_version not in API_VERSIONS:
            return self._reply(400, _error("BadRequest", "API version not supported"))
        deployment = self.state.deployments.get(name)
        if deployment is None:
            return self._reply(404, _error(
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment "
                "within the last 5 minutes, please wait a moment and try again."))
        self.quota_headers = self.state.quotas.peek(name).headers()
        if chat:
            return self._chat(deployment, raw_body, api_version)
        self._completions(deployment, raw_body, api_version)

    def _admit(self, deployment: Deployment, estimate: int, api_version: str, operation: str) -> bool:
        """Count the request against the deployment's quota, then wait the configured latency;
        False when it was answered (429) or abandoned (a reset during the wait)."""
        admission = self.state.quotas.admit(deployment.name, estimate)
        self.quota_headers = admission.headers()
        if not admission.admitted:
            self._reply(429, admission.body(api_version, operation))
            return False
        if not self.state.sleeper.sleep(self.state.latency_ms / 1000):
            self.drop_connection()
            return False
        return True

    def _not_supported(self, operation: str, deployment: Deployment) -> None:
        self._reply(400, _error("OperationNotSupported",
                                OPERATION_NOT_SUPPORTED.format(operation=operation, model=deployment.model)))

    def _filtered(self, texts: list[str]) -> bool:
        phrase = self.state.content_filter_phrase.lower()
        return any(phrase in text.lower() for text in texts)

    def _stream(self, events: list[dict], deployment: Deployment, operation: str) -> None:
        self.state.count(200)
        generation = self.state.sleeper.generation
        send_stream(self, events, headers={"apim-request-id": str(uuid.uuid4()), "x-ms-region": "Emulator",
                                           "Cache-Control": "no-cache", **self.quota_headers},
                    interval=self.state.stream_chunk_ms / 1000, stats=self.state.streams,
                    alive=lambda: self.state.sleeper.generation == generation,
                    info={"operation": operation, "deployment": deployment.name}, fault=self.stream_fault)

    # -- the completions operation ----------------------------------------
    def _completions(self, deployment: Deployment, raw_body: bytes, api_version: str) -> None:
        try:
            request = validate_request(json.loads(raw_body))
        except (ValueError, RecursionError):
            return self._reply(400, _error("BadRequest", "We could not parse the JSON body of your request.",
                                           None, "invalid_request_error"))
        except RequestInvalid as exc:
            return self._reply(400, exc.body)
        if deployment.is_chat:
            return self._not_supported("completion", deployment)
        estimate = estimate_tokens([textgen.count_tokens(p) for p in request["prompts"]],
                                   request["max_tokens"], request["best_of"])
        if not self._admit(deployment, estimate, api_version, "Completions_Create"):
            return
        requested = max(textgen.count_tokens(p) for p in request["prompts"]) + request["max_tokens"]
        if requested > CONTEXT_LENGTH:
            return self._reply(400, _error(
                "context_length_exceeded",
                f"This model's maximum context length is {CONTEXT_LENGTH} tokens, however you requested "
                f"{requested} tokens. Please reduce your prompt; or completion length.",
                "prompt", "invalid_request_error"))
        if self._filtered(request["prompts"]):
            return self._reply(400, refusal())

        annotated = api_version >= FILTER_ANNOTATIONS_SINCE
        response = self._complete(deployment.reported_model, request, annotated)
        if request["stream"]:
            return self._stream(self._completion_events(response, annotated), deployment, "completions")
        self._reply(200, response)

    # -- the chat completions operation ---------------------------------------
    def _chat(self, deployment: Deployment, raw_body: bytes, api_version: str) -> None:
        if not deployment.is_chat:
            return self._not_supported("chatCompletion", deployment)
        try:
            request = validate_chat(loads(raw_body), deployment, api_version)
        except ValueError:
            return self._reply(400, _error("BadRequest", "We could not parse the JSON body of your request.",
                                           None, "invalid_request_error"))
        except RequestInvalid as exc:
            return self._reply(400, exc.body)
        limit = request["max_tokens"]
        estimate = estimate_tokens([request["prompt_tokens"]], 16 if limit is None else limit, request["n"])
        if not self._admit(deployment, estimate, api_version, "ChatCompletions_Create"):
            return
        requested = request["prompt_tokens"] + (limit or 0)
        if requested > deployment.context_length:
            return self._reply(400, _error(
                "context_length_exceeded",
                f"This model's maximum context length is {deployment.context_length} tokens. However, you "
                f"requested {requested} tokens ({request['prompt_tokens']} in the messages, {limit or 0} in the "
                "completion). Please reduce the length of the messages or completion.",
                "messages", "invalid_request_error"))
        if self._filtered([text_of(m.get("content")) for m in request["messages"]]):
            return self._reply(400, refusal())
        answer = chat_answer.answer(request, deployment, api_version >= FILTER_ANNOTATIONS_SINCE)
        if request["stream"]:
            return self._stream(answer.chunks(request["include_usage"]), deployment, "chat")
        self._reply(200, answer.response())

    def _serve_fault(self, fault: Fault, query: dict, operation: str) -> bool:
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
            body = _error("429", f"Requests to the {operation} Operation under Azure OpenAI API "
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
                    choice["content_filter_results"] = choice_results()
                choices.append(choice)
        prompt_tokens = sum(max(1, textgen.count_tokens(p)) for p in request["prompts"])
        response: dict[str, Any] = {
            "id": "cmpl-" + secrets.token_hex(14), "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if annotated:
            response["prompt_filter_results"] = prompt_results(len(request["prompts"]))
        return response

    @staticmethod
    def _completion_events(response: dict, annotated: bool) -> list[dict]:
        """A completion as stream events, one per token: Azure's prompt annotation first (id, object
        and model empty, as Azure sends it), then ``text_completion`` chunks, the last of each
        choice with its ``finish_reason``."""
        head = {k: response[k] for k in ("id", "object", "created", "model")}
        events = []
        if annotated:
            events.append({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                           "prompt_filter_results": response["prompt_filter_results"]})
        for choice in response["choices"]:
            for token in textgen.tokens_of(choice["text"]):
                events.append({**head, "choices": [{"text": token, "index": choice["index"],
                                                    "finish_reason": None, "logprobs": None}]})
            final = {"text": "", "index": choice["index"], "finish_reason": choice["finish_reason"],
                     "logprobs": None}
            if annotated:
                final["content_filter_results"] = choice["content_filter_results"]
            events.append({**head, "choices": [final]})
        return events


class OpenAIServer(Server):
    """The Azure OpenAI emulator on its own port; ``endpoint`` is what
    ``AZURE_OPENAI_ENDPOINT`` must hold."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 deployments: Mapping[str, str | Deployment | dict] | None = None,
                 signer: TokenSigner | None = None, latency_ms: int = 0, identity: IdentityState | None = None,
                 clock: Callable[[], float] = time.monotonic, stream_chunk_ms: int = 0) -> None:
        """``clock`` (monotonic seconds) times the quota windows; tests pass their own. ``deployments``
        maps names to a model name (its kind guessed), a ``Deployment`` or ``{"kind", "model", "version"}``."""
        chosen = DEFAULT_DEPLOYMENTS if deployments is None else {
            name: make_deployment(name, spec) for name, spec in deployments.items()}
        self.state = OpenAIState(
            api_key=api_key or secrets.token_hex(16), deployments=dict(chosen),
            signer=signer or (identity.signer if identity else TokenSigner()), latency_ms=latency_ms,
            identity=identity, clock=clock, stream_chunk_ms=stream_chunk_ms)
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

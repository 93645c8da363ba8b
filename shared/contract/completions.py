"""Request validation: the caller's JSON becomes the exact parameters sent upstream.

Ranges follow the Azure OpenAI spec (``createCompletionRequest``), tightened by
the app's limits so one caller cannot spend unbounded tokens. Booleans are not
numbers and ``1.0`` is not an integer. Anything accepted here is accepted by the
service, so an invalid request never costs an upstream call.
"""

from __future__ import annotations

from typing import Any

from ..config.settings import Limits
from ..errors import invalid_request
from .bridge import USAGE_COUNTS
from .fields import (
    INT64,
    boolean,
    integer,
    logit_bias,
    number,
    stop_sequences,
    stream_flag,
    string,
    strings,
    top_level,
)

ALLOWED = frozenset({
    "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "logprobs", "echo", "suffix", "best_of", "seed", "stream", "stream_options", "model",
})


def validate_completion_request(data: Any, limits: Limits, *, passthrough: bool = False,
                                streaming: bool = False) -> dict[str, Any]:
    """The parameters to send upstream (``model`` left out), or AppError 400 ``invalid_request``
    naming ``param``. ``passthrough``: unknown fields go to the service (the compatible routes)."""
    params = top_level(data, ALLOWED, passthrough)
    if "prompt" not in params:
        raise invalid_request("'prompt' is required.", "prompt")
    strings(params["prompt"], "prompt", most=limits.max_prompts, what="the text to complete")
    stop_sequences(params)

    integer(params, "max_tokens", 1, limits.max_tokens)
    integer(params, "n", 1, limits.max_n)
    integer(params, "best_of", 1, limits.max_best_of)
    integer(params, "logprobs", 0, 5)
    integer(params, "seed", -INT64, INT64 - 1)
    number(params, "temperature", 0, 2)
    number(params, "top_p", 0, 1)
    number(params, "presence_penalty", -2, 2)
    number(params, "frequency_penalty", -2, 2)
    string(params, "user")
    string(params, "suffix")
    if "best_of" in params and params["best_of"] < params.get("n", 1):
        raise invalid_request("'best_of' must be greater than or equal to 'n'.", "best_of")
    boolean(params, "echo")
    stream_flag(params, streaming)
    logit_bias(params)
    return params


def shape_response(upstream: dict[str, Any], deployment: str, backend: str) -> dict[str, Any]:
    """The app's 200 body: the upstream's fields the contract names, plus ``deployment``,
    ``backend`` (the pool's name for the deployment that answered) and ``text``."""
    choices = []
    for choice in upstream["choices"]:
        shaped = {"index": choice.get("index"), "text": choice.get("text", ""),
                  "finish_reason": choice.get("finish_reason"), "logprobs": choice.get("logprobs")}
        if "content_filter_results" in choice:
            shaped["content_filter_results"] = choice["content_filter_results"]
        choices.append(shaped)
    usage = upstream["usage"]
    body = {
        "id": upstream.get("id"), "object": "text_completion", "created": upstream.get("created"),
        "model": upstream.get("model"), "deployment": deployment, "backend": backend,
        "text": choices[0]["text"] if choices else "", "choices": choices,
        "usage": {name: usage.get(name, 0) for name in USAGE_COUNTS},
    }
    if "prompt_filter_results" in upstream:
        body["prompt_filter_results"] = upstream["prompt_filter_results"]
    return body

"""The completions contract on a chat deployment, and stop sequences the app applies itself.

A completions request becomes one conversation per prompt: the instruction
(``COMPLETIONS_CHAT_INSTRUCTIONS``; none when empty), then the prompt as the
user's message. The prompts' answers merge back into one ``text_completion``
body: choice ``index`` = prompt position × ``n`` + the choice's own index,
usage summed, each prompt's filter results under its ``prompt_index``.
"""

from __future__ import annotations

from typing import Any

from ..errors import invalid_request

# Parameters that mean the same on chat completions.
MAPPED = ("max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed",
          "logit_bias", "user")
USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def prompts_of(params: dict[str, Any]) -> list[str]:
    prompt = params["prompt"]
    return prompt if isinstance(prompt, list) else [prompt]


def refuse_what_chat_cannot_do(params: dict[str, Any]) -> None:
    """400 naming the first parameter that has no chat equivalent, and why."""
    n = params.get("n", 1)
    if "logprobs" in params:
        raise invalid_request("'logprobs' has no equivalent on a chat deployment: chat models report log "
                              "probabilities per message token, not per completion token; omit it.", "logprobs")
    if params.get("echo") is True:
        raise invalid_request("'echo' has no equivalent on a chat deployment: a chat model answers with new text "
                              "only; omit it, or send 'echo': false.", "echo")
    if "suffix" in params:
        raise invalid_request("'suffix' has no equivalent on a chat deployment: chat models do not insert text "
                              "before a given suffix; omit it.", "suffix")
    if params.get("best_of", n) > n:
        raise invalid_request("'best_of' greater than 'n' has no equivalent on a chat deployment: chat models do "
                              "not rank candidates server-side; ask for 'n' choices instead.", "best_of")


def chat_requests(params: dict[str, Any], instructions: str) -> list[dict[str, Any]]:
    """One chat request per prompt (the caller's errors refused first)."""
    refuse_what_chat_cannot_do(params)
    common = {name: params[name] for name in MAPPED if name in params}
    system = [{"role": "system", "content": instructions}] if instructions else []
    return [{"messages": [*system, {"role": "user", "content": prompt}], **common} for prompt in prompts_of(params)]


def completions_from_chat(responses: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The ``text_completion`` body for the prompts' chat answers, in prompt order."""
    first = responses[0]
    choices: list[dict[str, Any]] = []
    filters: list[dict[str, Any]] = []
    usage = dict.fromkeys(USAGE_COUNTS, 0)
    for position, response in enumerate(responses):
        for choice in response.get("choices", []):
            message = choice.get("message") or {}
            text = message.get("content")
            shaped: dict[str, Any] = {"index": position * n + (choice.get("index") or 0),
                                      "text": text if isinstance(text, str) else "",
                                      "finish_reason": choice.get("finish_reason"), "logprobs": None}
            if "content_filter_results" in choice:
                shaped["content_filter_results"] = choice["content_filter_results"]
            choices.append(shaped)
        for result in response.get("prompt_filter_results") or ():
            if isinstance(result, dict):
                filters.append({**result, "prompt_index": position})
        for name in USAGE_COUNTS:
            usage[name] += response.get("usage", {}).get(name, 0)
    choices.sort(key=lambda choice: choice["index"])
    merged = {"id": first.get("id"), "object": "text_completion", "created": first.get("created"),
              "model": first.get("model"), "choices": choices, "usage": usage}
    if filters:
        merged["prompt_filter_results"] = filters
    return merged


def earliest_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop sequence begins in ``text``; None when none occurs."""
    found = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return min(found) if found else None


def apply_stop(response: dict[str, Any], stops: list[str], *, chat: bool) -> dict[str, Any]:
    """``response`` with each choice cut at its earliest stop sequence (``finish_reason`` then
    ``stop``): the stop a deployment refused, applied by the app."""
    field = "content" if chat else "text"
    choices = []
    for choice in response.get("choices", []):
        holder = choice.get("message") if chat else choice
        if not isinstance(holder, dict):
            choices.append(choice)
            continue
        text = holder.get(field)
        cut = earliest_stop(text, stops) if isinstance(text, str) else None
        if cut is not None and isinstance(text, str):
            trimmed = {**holder, field: text[:cut]}
            choice = {**choice, "message": trimmed} if chat else trimmed
            choice["finish_reason"] = "stop"
        choices.append(choice)
    return {**response, "choices": choices}

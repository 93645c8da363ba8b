"""Azure OpenAI's content-filter annotations and its refusal of a prompt, as the emulator sends them."""

from __future__ import annotations

from .validation import error

SAFE = {"filtered": False, "severity": "safe"}
UNDETECTED = {"filtered": False, "detected": False}


def severities(**overrides: dict) -> dict:
    result = {name: dict(SAFE) for name in ("hate", "self_harm", "sexual", "violence")}
    result.update(overrides)
    return result


def prompt_results(prompts: int) -> list[dict]:
    """``prompt_filter_results``: one per prompt (chat has one, the messages)."""
    return [{"prompt_index": i, "content_filter_results": severities(jailbreak=dict(UNDETECTED))}
            for i in range(prompts)]


def choice_results(chat: bool = False) -> dict:
    """A choice's ``content_filter_results``; chat answers also report protected material."""
    if not chat:
        return severities()
    return severities(protected_material_code=dict(UNDETECTED), protected_material_text=dict(UNDETECTED))


def refusal() -> dict:
    """The 400 for a prompt that trips the filter (the body Azure sends, ``innererror`` included)."""
    return error(
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
        "Please modify your prompt and retry. To learn more about our content filtering policies please read "
        "our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "prompt", "invalid_request_error", status=400,
        innererror={"code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": severities(violence={"filtered": True, "severity": "high"},
                                                        jailbreak=dict(UNDETECTED))})

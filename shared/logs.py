"""What the app logs: one line per invocation, and the third-party loggers kept quiet.

Never a key, a token or (unless ``COMPLETIONS_LOG_TEXT``) a prompt or a completion.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .config.settings import Settings

if TYPE_CHECKING:
    from .outcome import Outcome
    from .upstream.client import UpstreamResult

log = logging.getLogger(__name__)


def configure_loggers(settings: Settings) -> None:
    # openai 0.28 logs whole request bodies (prompts) at DEBUG; keep them out of the
    # logs unless the operator asked for text logging.
    logging.getLogger("openai").setLevel(logging.DEBUG if settings.log_text else logging.INFO)
    if os.environ.get("OPENAI_LOG", "").lower() in ("debug", "info") and not settings.log_text:
        log.warning("OPENAI_LOG is set: openai 0.28 prints request bodies (prompts) to stderr itself, "
                    "whatever COMPLETIONS_LOG_TEXT says; unset it to keep prompts out of the logs")
    # azure-core logs every request of the Azure SDK clients (token endpoint, App Configuration,
    # Key Vault) at INFO, several lines each; what an operator needs from them is logged by the app.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(
        logging.INFO if settings.log_text else logging.WARNING)
    if any(backend.identity is not None for backend in settings.backends):
        from .upstream.credentials import quiet_identity_loggers

        quiet_identity_loggers(settings.log_text)


def log_invocation(outcome: Outcome, result: UpstreamResult | None, params: dict[str, Any], request_id: str,
                   source: str, started: float, settings: Settings | None, trace_id: str = "",
                   caller: str = "-") -> None:
    """The invocation's one line (``started``: its ``time.perf_counter()``), and its text when asked for."""
    error = outcome.error
    usage = outcome.body.get("usage", {}) if outcome.ok else {}
    attempts = result.attempts if result else (error.attempts if error else 0)
    upstream_ms = result.upstream_ms if result else (error.upstream_ms if error else None)
    adjusted = ",".join(result.plan.adjusted) if result and result.plan.adjusted else "-"
    log.info(
        "completion request_id=%s source=%s caller=%s backend=%s deployment=%s api=%s status=%d code=%s "
        "attempts=%d failovers=%s adjusted=%s upstream_ms=%s prompt_tokens=%s completion_tokens=%s "
        "total_tokens=%s duration_ms=%.1f%s",
        request_id, source, caller, result.backend.name if result else "-",
        result.backend.deployment if result else "-",
        result.plan.api if result else "-", outcome.status, error.code if error else "ok", attempts,
        result.failovers if result else "-", adjusted, f"{upstream_ms:.1f}" if upstream_ms is not None else "-",
        usage.get("prompt_tokens", "-"), usage.get("completion_tokens", "-"), usage.get("total_tokens", "-"),
        (time.perf_counter() - started) * 1000, f" trace_id={trace_id}" if trace_id else "")
    if settings is not None and settings.log_text and params:
        from .handler import answer_text

        asked = params.get("messages") if "messages" in params else params.get("prompt")
        log.info("completion text request_id=%s prompt=%r completions=%r", request_id, asked,
                 [answer_text(choice) for choice in outcome.body.get("choices", []) if isinstance(choice, dict)])

"""A sample reader of the results queue: print results as they arrive.

    python -m devserver.tools.results                      # every result on the queue now (each read is deleted)
    python -m devserver.tools.results --id order-42 --wait 60
    python -m devserver.tools.results --wait 30 --keep     # wait for results; leave them on the queue

Results are base64-encoded JSON messages (``TextBase64DecodePolicy``), one per
request: ``{"id", "status": "succeeded" | "failed", ...}``. The connection comes
from ``--connection``, else ``AzureWebJobsStorage`` (environment, then
local.settings.json), else Azurite's ``UseDevelopmentStorage=true``, so with
``make run`` serving, ``make results`` needs no arguments. Needs
``azure-storage-queue`` (requirements-dev.txt; never deployed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from azure.core.exceptions import ResourceExistsError, ServiceRequestError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

APP_DIR = Path(__file__).resolve().parents[2]
OTHERS_HIDDEN_FOR = 1  # seconds a result read for someone else stays invisible to other readers
# A couple of quick retries: storage that is not running is reported in seconds, not after
# the SDK's default 15 s, 18 s and 24 s waits.
CLIENT_OPTIONS = {"retry_total": 2, "initial_backoff": 1, "increment_base": 1}


def default_connection() -> str:
    if os.environ.get("AzureWebJobsStorage"):
        return os.environ["AzureWebJobsStorage"]
    settings = APP_DIR / "local.settings.json"
    if settings.exists():
        value = json.loads(settings.read_text(encoding="utf-8-sig")).get("Values", {}).get("AzureWebJobsStorage")
        if value:
            return value
    return "UseDevelopmentStorage=true"


def results_queue(connection: str, name: str) -> QueueClient:
    client = QueueClient.from_connection_string(connection, name, message_decode_policy=TextBase64DecodePolicy(),
                                                **CLIENT_OPTIONS)
    try:
        client.create_queue()
    except ResourceExistsError:
        pass
    return client


def read_results(connection: str, queue: str, ids: Iterable[str] | None, timeout: float, *,
                 keep: bool = False) -> dict[str, dict]:
    """Results by id: those for ``ids`` (every one seen, when ``ids`` is None) that arrive
    within ``timeout`` seconds, deleted once read unless ``keep``. Results for other ids
    are left on the queue for their own readers."""
    wanted = None if ids is None else set(ids)
    client = results_queue(connection, queue)
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while True:
        batch = list(client.receive_messages(messages_per_page=32, max_messages=32,
                                             visibility_timeout=OTHERS_HIDDEN_FOR))
        for message in batch:
            try:
                result = json.loads(message.content)
            except (TypeError, ValueError):
                continue
            if not isinstance(result, dict) or (wanted is not None and result.get("id") not in wanted):
                continue
            found[str(result.get("id"))] = result
            if not keep:  # kept ones reappear after OTHERS_HIDDEN_FOR
                client.delete_message(message)
        if wanted is not None and wanted <= found.keys():
            return found
        if wanted is None and found and not batch:
            return found  # everything that was there has been read
        if time.monotonic() >= deadline:
            return found
        if not batch:
            time.sleep(0.25)


def wait_for_result(connection: str, results_queue_name: str, request_id: str, timeout: float) -> dict | None:
    """The result message for ``request_id`` (deleted once read), or None after ``timeout`` seconds."""
    return read_results(connection, results_queue_name, [request_id], timeout).get(request_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.tools.results", description=__doc__.split("\n")[0])
    parser.add_argument("--connection", default=None, help="storage connection string")
    parser.add_argument("--queue", default=os.environ.get("COMPLETIONS_RESULT_QUEUE") or "completion-results")
    parser.add_argument("--id", action="append", default=None, help="only this request's result (repeatable)")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for results (0: only those there now)")
    parser.add_argument("--keep", action="store_true", help="leave the results on the queue")
    args = parser.parse_args(argv)
    try:
        found = read_results(args.connection or default_connection(), args.queue, args.id, args.wait, keep=args.keep)
    except ServiceRequestError:
        print(json.dumps({"error": "storage did not answer: is `make run` (or Azurite) running?"}), file=sys.stderr)
        return 1
    for result in found.values():
        print(json.dumps(result, indent=2))
    missing = set(args.id or ()) - found.keys()
    if not found and not args.id and not args.wait:  # nothing there: say so, rather than print nothing
        print(f"The results queue '{args.queue}' is empty (no result yet? `make results ARGS=\"--wait 30\"` "
              "waits for one).", file=sys.stderr)
        return 0
    if missing or (args.wait and not found):
        print(json.dumps({"error": f"no result for {sorted(missing) or 'any request'} within {args.wait:g} s"}),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

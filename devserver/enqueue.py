"""A sample producer: put a completion request on the request queue, optionally wait for its result.

    python -m devserver.enqueue '{"prompt": "The food was delicious and the waiter", "stop": "."}' --wait 60

Messages are base64-encoded text, as the Functions queue trigger expects by
default (``TextBase64EncodePolicy``); results are read the same way
(``TextBase64DecodePolicy``). The connection string comes from ``--connection``,
else ``AzureWebJobsStorage`` (environment, then local.settings.json), else
Azurite's ``UseDevelopmentStorage=true``. Needs ``azure-storage-queue``
(in requirements-dev.txt; never deployed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

APP_DIR = Path(__file__).resolve().parent.parent


def _client(connection: str, queue: str, **policies) -> QueueClient:
    client = QueueClient.from_connection_string(connection, queue, **policies)
    try:
        client.create_queue()
    except ResourceExistsError:
        pass
    return client


def enqueue(connection: str, queue: str, request: dict) -> str:
    """Send ``request`` (given an ``id`` if it has none); returns the id."""
    request = {"id": uuid.uuid4().hex, **request}
    _client(connection, queue, message_encode_policy=TextBase64EncodePolicy()).send_message(json.dumps(request))
    return request["id"]


def wait_for_result(connection: str, results_queue: str, request_id: str, timeout: float) -> dict | None:
    """The result message for ``request_id`` (deleted once read), or None after ``timeout`` seconds.
    Other results are left on the queue for their own readers."""
    client = _client(connection, results_queue, message_decode_policy=TextBase64DecodePolicy())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in client.receive_messages(messages_per_page=32, visibility_timeout=5):
            try:
                result = json.loads(message.content)
            except (TypeError, ValueError):
                continue
            if isinstance(result, dict) and result.get("id") == request_id:
                client.delete_message(message)
                return result
        time.sleep(0.5)
    return None


def default_connection() -> str:
    if os.environ.get("AzureWebJobsStorage"):
        return os.environ["AzureWebJobsStorage"]
    settings = APP_DIR / "local.settings.json"
    if settings.exists():
        value = json.loads(settings.read_text(encoding="utf-8-sig")).get("Values", {}).get("AzureWebJobsStorage")
        if value:
            return value
    return "UseDevelopmentStorage=true"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.enqueue", description=__doc__.split("\n")[0])
    parser.add_argument("request", help="the request JSON (the HTTP body, optionally with an 'id')")
    parser.add_argument("--connection", default=None, help="storage connection string")
    parser.add_argument("--queue", default=os.environ.get("COMPLETIONS_REQUEST_QUEUE") or "completion-requests")
    parser.add_argument("--results", default=os.environ.get("COMPLETIONS_RESULT_QUEUE") or "completion-results")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for the result (0: do not wait)")
    args = parser.parse_args(argv)
    request = json.loads(args.request)
    if not isinstance(request, dict):
        parser.error("the request must be a JSON object")
    connection = args.connection or default_connection()
    request_id = enqueue(connection, args.queue, request)
    print(json.dumps({"enqueued": request_id, "queue": args.queue}), flush=True)
    if args.wait:
        result = wait_for_result(connection, args.results, request_id, args.wait)
        if result is None:
            print(json.dumps({"error": f"no result within {args.wait:g} s"}), file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

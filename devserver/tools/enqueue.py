"""A sample producer: put a completion request on the request queue, optionally wait for its result.

    python -m devserver.tools.enqueue '{"prompt": "The food was delicious and the waiter", "stop": "."}' --wait 60

Messages are base64-encoded text, as the Functions queue trigger expects by
default (``TextBase64EncodePolicy``); results are read the same way
(``TextBase64DecodePolicy``, see ``devserver.tools.results``). The connection string
comes from ``--connection``, else ``AzureWebJobsStorage`` (environment, then
local.settings.json), else Azurite's ``UseDevelopmentStorage=true``: the
storage ``make run`` uses, so with ``make run`` serving this needs no
arguments. Needs ``azure-storage-queue`` (in requirements-dev.txt; never deployed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from azure.core.exceptions import ResourceExistsError, ServiceRequestError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from .results import CLIENT_OPTIONS, default_connection, wait_for_result

__all__ = ["enqueue", "wait_for_result", "default_connection", "main"]


def enqueue(connection: str, queue: str, request: dict) -> str:
    """Send ``request`` (given an ``id`` if it has none); returns the id."""
    request = {"id": uuid.uuid4().hex, **request}
    client = QueueClient.from_connection_string(connection, queue, message_encode_policy=TextBase64EncodePolicy(),
                                                **CLIENT_OPTIONS)
    try:
        client.create_queue()
    except ResourceExistsError:
        pass
    client.send_message(json.dumps(request))
    return request["id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.tools.enqueue", description=__doc__.split("\n")[0])
    parser.add_argument("request", help="the request JSON (the HTTP body, optionally with an 'id')")
    parser.add_argument("--connection", default=None, help="storage connection string")
    parser.add_argument("--queue", default=os.environ.get("COMPLETIONS_REQUEST_QUEUE") or "completion-requests")
    parser.add_argument("--results", default=os.environ.get("COMPLETIONS_RESULT_QUEUE") or "completion-results")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for the result (0: do not wait)")
    args = parser.parse_args(argv)
    try:
        request = json.loads(args.request)
    except ValueError:
        parser.error("the request must be JSON, e.g. REQUEST='{\"prompt\": \"Hello\"}'")
    if not isinstance(request, dict):
        parser.error("the request must be a JSON object")
    connection = args.connection or default_connection()
    try:
        request_id = enqueue(connection, args.queue, request)
    except ServiceRequestError:
        print(json.dumps({"error": "storage did not answer: is `make run` (or Azurite) running?"}), file=sys.stderr)
        return 1
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

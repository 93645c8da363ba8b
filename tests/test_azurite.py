"""The queue wire format end to end, with Azurite (the Azure Storage emulator) on loopback.

A producer enqueues with the documented policy (base64 text), the test receives
the raw message as the Functions host would, decodes it as the host does
(``messageEncoding: base64``), runs the queue function with a real
``QueueMessage``, and puts the result on the results queue base64-encoded, as
the output binding does; the documented reader gets it back.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

import function_app
from app_client import LOOP, SEED
from devserver.enqueue import enqueue, wait_for_result
from test_events import Out

ROOT = Path(__file__).resolve().parent.parent
AZURITE_QUEUE = ROOT / "devserver" / "azurite" / "node_modules" / ".bin" / "azurite-queue"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public


@pytest.fixture(scope="module")
def azurite():
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the Azurite queue wire-format test needs it")
    assert AZURITE_QUEUE.exists(), "Azurite is not installed: run `make test` (npm ci --prefix devserver/azurite)"
    process = subprocess.Popen(
        [str(AZURITE_QUEUE), "--queueHost", "127.0.0.1", "--queuePort", "0", "--inMemoryPersistence",
         "--disableTelemetry", "--skipApiVersionCheck", "--loose", "--silent"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tempfile.mkdtemp())
    try:
        for line in process.stdout:
            found = re.search(r"listens on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError("Azurite did not start")
        yield (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
               f"QueueEndpoint=http://127.0.0.1:{found.group(1)}/devstoreaccount1;")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_queue_round_trip_through_azurite(azurite, configure_app):
    configure_app()
    request_id = enqueue(azurite, "completion-requests", {"id": "wire-1", **SEED})
    assert request_id == "wire-1"

    # What the host receives: the raw message, base64 text.
    raw = QueueClient.from_connection_string(azurite, "completion-requests")
    received = next(iter(raw.receive_messages(messages_per_page=1, visibility_timeout=30)))
    assert json.loads(base64.b64decode(received.content)) == {"id": "wire-1", **SEED}

    msg = QueueMessage(id=received.id, body=base64.b64decode(received.content),
                       dequeue_count=received.dequeue_count, pop_receipt=received.pop_receipt)
    out = Out()
    LOOP.run(function_app.completion_from_queue.build().get_user_function()(msg, out))
    raw.delete_message(received)  # the host deletes the message once the function succeeded

    results = QueueClient.from_connection_string(azurite, "completion-results",
                                                 message_encode_policy=TextBase64EncodePolicy())
    results.create_queue()
    results.send_message(out.value)  # the output binding, base64 as host.json says

    result = wait_for_result(azurite, "completion-results", "wire-1", timeout=10)
    assert result["status"] == "succeeded" and result["id"] == "wire-1"
    assert result["result"]["text"].startswith(" ")
    assert list(raw.peek_messages()) == []

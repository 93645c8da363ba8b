"""One side of the telemetry benchmarks, in its own process: ``python -m benchmarks.telemetry_worker``.

Settings (the app's and the telemetry switches) come from the environment, as in
Azure. It imports ``function_app`` (timed), warms up, prints ``{"ready": ..., "import_s": ...}``,
then answers each line on stdin (a number) with that many sequential completions'
durations in nanoseconds, through the HTTP function's user function on one
long-lived event loop, as the worker runs it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

REQUEST = {"prompt": "The food was delicious and the waiter", "stop": ".", "temperature": 0}


def main() -> int:
    warmup = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    started = time.perf_counter()
    import function_app

    imported = time.perf_counter() - started
    from benchmarks.worker import function_request

    user_function = function_app.completions.build().get_user_function()
    body = json.dumps(REQUEST).encode()
    loop = asyncio.new_event_loop()

    def call() -> int:
        request = function_request(body)
        began = time.perf_counter_ns()
        status = loop.run_until_complete(user_function(request)).status_code
        elapsed = time.perf_counter_ns() - began
        if status != 200:
            raise SystemExit(f"completion failed with {status}")
        return elapsed

    for _ in range(warmup):
        call()
    print(json.dumps({"ready": True, "import_s": imported,
                      "telemetry": type(function_app.service.telemetry).__name__}), flush=True)
    for line in sys.stdin:
        print(json.dumps([call() for _ in range(int(line))]), flush=True)
    loop.run_until_complete(function_app.service.aclose())
    return 0


if __name__ == "__main__":
    sys.exit(main())

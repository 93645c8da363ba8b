"""Run by tests/test_async.py in a fresh process, as the Functions worker runs the app: import
function_app (settings from the environment), then bursts of completions on one event loop in
asyncio debug mode. Prints, as JSON, the slow-callback reports of each burst (stops at the
first clean one). Arguments: the number of completions per burst; ``--plant-ms N`` plants a
blocking ``time.sleep`` of N ms in every invocation, the control that shows the probe sees one."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import function_app  # noqa: E402
from support.worker_requests import completions_request  # noqa: E402

REQUEST = json.dumps({"prompt": "The food was delicious and the waiter", "stop": "."}).encode()


class Reports(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:300])


async def bursts(size: int, reports: Reports, plant_seconds: float) -> list[list[str]]:
    user_function = function_app.completions.build().get_user_function()

    async def call() -> int:
        if plant_seconds:
            time.sleep(plant_seconds)
        request = completions_request(raw=REQUEST)
        return (await user_function(request)).status_code

    loop = asyncio.get_running_loop()
    assert await call() == 200  # the first token request loads azure-identity on its thread
    by_burst = []
    for _ in range(3):
        reports.messages.clear()
        loop.slow_callback_duration = 0.05
        tasks = []
        for _ in range(size):  # each invocation starts in its own callback, as the worker starts them
            tasks.append(asyncio.create_task(call()))
            await asyncio.sleep(0)
        statuses = await asyncio.gather(*tasks)
        loop.slow_callback_duration = 10
        assert list(statuses) == [200] * size, statuses
        by_burst.append(list(reports.messages))
        if not by_burst[-1]:
            break
    await function_app.service.aclose()  # closing the connections at shutdown (once) is not the request path
    return by_burst


def main() -> None:
    reports = Reports()
    logging.getLogger("asyncio").addHandler(reports)
    plant_ms = float(sys.argv[sys.argv.index("--plant-ms") + 1]) if "--plant-ms" in sys.argv else 0.0
    print(json.dumps(asyncio.run(bursts(int(sys.argv[1]), reports, plant_ms / 1000), debug=True)))


if __name__ == "__main__":
    main()

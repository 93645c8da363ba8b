"""The instance's concurrency cap: upstream calls in flight, one semaphore per event loop.

asyncio primitives belong to one loop; the Functions worker runs one, so this is
one semaphore per process. A caller waits for a slot within its deadline, then
gets 503 ``overloaded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator

from ..clock import Deadline
from ..errors import AppError
from ..telemetry.hooks import Telemetry


def overloaded() -> AppError:
    return AppError(503, "overloaded", "Too many completions are in progress on this instance.",
                    retry_after=1, retryable=True)


class Slots:
    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.size)
        return semaphore

    @contextlib.asynccontextmanager
    async def held(self, deadline: Deadline, telemetry: Telemetry, min_left: float) -> AsyncIterator[None]:
        """Hold one slot for the block; 503 ``overloaded`` when none frees up within the deadline,
        or when the one that did leaves less than ``min_left`` seconds to use it."""
        slots = self._get()
        if slots.locked():  # every slot taken: wait for one within the deadline
            waiting = time.perf_counter()
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await slots.acquire()
            except TimeoutError:
                telemetry.slot_wait(time.perf_counter() - waiting, timed_out=True)
                raise overloaded() from None
            telemetry.slot_wait(time.perf_counter() - waiting)
        else:
            await slots.acquire()  # returns at once
        try:
            if deadline.remaining() < min_left:  # a slot, but too late to use it
                raise overloaded()
            yield
        finally:
            slots.release()

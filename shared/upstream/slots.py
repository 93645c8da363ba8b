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
from collections.abc import AsyncIterator, Callable

from ..clock import Deadline
from ..errors import AppError
from ..telemetry.hooks import Telemetry


def overloaded() -> AppError:
    return AppError(503, "overloaded", "Too many completions are in progress on this instance.",
                    retry_after=1, retryable=True)


class Slots:
    """A request holds one slot per upstream call it makes at once (a completions request's
    prompts on a chat deployment are several). Requests that need several take them one by
    one, one such request at a time: a request holding some slots and waiting for more can
    only be waiting on requests that will finish, so none waits forever."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _get(self) -> tuple[asyncio.Semaphore, asyncio.Lock]:
        loop = asyncio.get_running_loop()
        found = self._per_loop.get(loop)
        if found is None:
            found = self._per_loop[loop] = (asyncio.Semaphore(self.size), asyncio.Lock())
        return found

    @contextlib.asynccontextmanager
    async def held(self, deadline: Deadline, telemetry: Telemetry, min_left: float,
                   count: int = 1) -> AsyncIterator[None]:
        """Hold ``count`` slots (at most all of them) for the block (``acquire``)."""
        release = await self.acquire(deadline, telemetry, min_left, count)
        try:
            yield
        finally:
            release()

    async def acquire(self, deadline: Deadline, telemetry: Telemetry, min_left: float,
                      count: int = 1) -> Callable[[], None]:
        """Take ``count`` slots (at most all of them) and return what gives them back (once); 503
        ``overloaded`` when they do not free up within the deadline, or leave less than
        ``min_left`` seconds to use them. (A stream holds its slots until it ends.)"""
        slots, several = self._get()
        count = max(1, min(count, self.size))
        held = 0

        def release() -> None:
            nonlocal held
            while held:
                held -= 1
                slots.release()

        try:
            if count == 1:
                await self._acquire(slots, deadline, telemetry)
                held = 1
            else:
                async with asyncio.timeout(deadline.remaining()):
                    await several.acquire()
                try:
                    for _ in range(count):
                        await self._acquire(slots, deadline, telemetry)
                        held += 1
                finally:
                    several.release()
            if deadline.remaining() < min_left:  # slots, but too late to use them
                raise overloaded()
        except TimeoutError:
            release()
            raise overloaded() from None
        except BaseException:
            release()
            raise
        return release


    @staticmethod
    async def _acquire(slots: asyncio.Semaphore, deadline: Deadline, telemetry: Telemetry) -> None:
        if not slots.locked():
            await slots.acquire()  # returns at once
            return
        waiting = time.perf_counter()  # every slot taken: wait for one within the deadline
        try:
            async with asyncio.timeout(deadline.remaining()):
                await slots.acquire()
        except TimeoutError:
            telemetry.slot_wait(time.perf_counter() - waiting, timed_out=True)
            raise overloaded() from None
        telemetry.slot_wait(time.perf_counter() - waiting)

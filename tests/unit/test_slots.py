"""The concurrency cap: a request holds one slot per upstream call it makes at once, and none waits forever."""

from __future__ import annotations

import asyncio

from shared.clock import Deadline
from shared.telemetry.hooks import NOOP
from shared.upstream.slots import Slots


def test_a_fanned_out_request_holds_a_slot_per_call_and_requests_needing_several_never_deadlock(fake_clock):
    slots = Slots(4)
    order: list[str] = []

    async def request(name: str, count: int, hold: asyncio.Event) -> None:
        async with slots.held(Deadline(60, fake_clock), NOOP, 0.1, count=count):
            order.append(f"{name}+")
            await hold.wait()
        order.append(f"{name}-")

    async def scenario() -> None:
        release = {name: asyncio.Event() for name in "abc"}
        single = asyncio.create_task(request("a", 1, release["a"]))
        await asyncio.sleep(0)
        first = asyncio.create_task(request("b", 3, release["b"]))  # 1 + 3 = all four slots
        second = asyncio.create_task(request("c", 3, release["c"]))  # must wait for b's
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == ["a+", "b+"]
        release["a"].set()
        release["b"].set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert "c+" in order
        release["c"].set()
        await asyncio.gather(single, first, second)

    asyncio.run(scenario())
    assert order.index("c+") > order.index("b-")


def test_a_request_needing_more_slots_than_there_are_takes_them_all(fake_clock):
    async def scenario() -> int:
        slots = Slots(2)
        async with slots.held(Deadline(60, fake_clock), NOOP, 0.1, count=16):
            semaphore, _ = slots._get()
            return semaphore._value

    assert asyncio.run(scenario()) == 0

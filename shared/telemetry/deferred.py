"""Measurements queued by the request path and recorded into the OpenTelemetry SDK on a thread of their own.

The SDK spends 15-30 us on each measurement (it cleans and hashes the attributes):
the request path only appends to a deque, and a daemon thread records them every
50 ms, mostly while the event loop waits on the network.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
from typing import Any

from opentelemetry.metrics import Counter

log = logging.getLogger(__name__)

DEFERRED_INTERVAL = 0.05  # seconds between the metrics thread's passes
DEFERRED_CHUNK = 32  # measurements recorded between offers of the GIL to the event loop's thread (~0.8 ms)
DEFERRED_MAX = 100_000  # measurements waiting for it at most; more are dropped (and counted)


class Deferred:
    """Measurements queued by the request path and recorded into the SDK by a daemon thread
    every ``DEFERRED_INTERVAL`` (mostly while the event loop waits on the network). Bounded:
    past ``DEFERRED_MAX`` waiting, a measurement is dropped and counted."""

    def __init__(self, dropped: Any) -> None:
        self._dropped = dropped  # the counter of what was lost
        self._queue: collections.deque = collections.deque()
        self._lost = self._reported_lost = 0
        self._lock = threading.Lock()  # one drain at a time (the thread, a flush)
        self._stopped = threading.Event()
        threading.Thread(target=self._run, name="completions-metrics", daemon=True).start()
        atexit.register(self.drain)  # before the providers' own exit hooks (registered earlier) export

    def put(self, record: Any, value: float, attributes: Any) -> None:
        if len(self._queue) >= DEFERRED_MAX:
            self._lost += 1
            return
        self._queue.append((record, value, attributes))

    def _run(self) -> None:
        while not self._stopped.wait(DEFERRED_INTERVAL):
            self.drain()

    def stop(self) -> None:
        self._stopped.set()
        self.drain()

    def drain(self) -> None:
        with self._lock:
            # Counters are summed per attribute set first: one SDK call per set and pass, rather
            # than one per request (histograms need every value, so they go one by one).
            sums: dict[tuple, list] = {}
            done = 0
            while self._queue:
                record, value, attributes = self._queue.popleft()
                if self._summed(sums, record, value, attributes):
                    continue
                self._record(record, value, attributes)
                done += 1
                if done % DEFERRED_CHUNK == 0:
                    time.sleep(0)  # let the event loop's thread take the GIL between chunks
            for (owner, _), (value, attributes) in sums.items():
                self._record(owner.add, value, attributes)
            lost = self._lost
            if lost > self._reported_lost:  # (a counter the drain itself feeds: recorded directly)
                self._dropped.add(lost - self._reported_lost, {"otel.signal": "metrics", "error.type": "queue_full"})
                self._reported_lost = lost

    @staticmethod
    def _summed(sums: dict[tuple, list], record: Any, value: float, attributes: Any) -> bool:
        """Add a counter's measurement to ``sums``; False for anything else (recorded as it is)."""
        owner = getattr(record, "__self__", None)
        if not isinstance(owner, Counter):
            return False
        try:
            key = (owner, frozenset(attributes.items()))
        except TypeError:  # an unhashable attribute value: recorded as it is
            return False
        entry = sums.get(key)
        if entry is None:
            sums[key] = [value, attributes]
        else:
            entry[0] += value
        return True

    @staticmethod
    def _record(record: Any, value: float, attributes: Any) -> None:
        try:
            record(value, attributes)
        except Exception:  # noqa: BLE001 - a measurement must not stop the others
            log.debug("a measurement could not be recorded", exc_info=True)

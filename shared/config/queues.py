"""The event-driven functions' queue names: binding metadata, read when the host indexes the app."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from . import registry as R
from .reader import Reader


class QueueNames(NamedTuple):
    requests: str = R.REQUEST_QUEUE.default
    results: str = R.RESULT_QUEUE.default

    @property
    def poison(self) -> str:
        return f"{self.requests}-poison"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> QueueNames:
        read = Reader(environ)
        return cls(read.text(R.REQUEST_QUEUE) or cls().requests, read.text(R.RESULT_QUEUE) or cls().results)

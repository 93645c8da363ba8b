"""Queue triggers, run the way the Functions host's Storage queues extension runs them.

One listener per queue-triggered function, on the host's event loop:

- **Polling.** Receive up to ``batchSize`` messages, invisible for 10 minutes
  while they are processed (renewed halfway for longer invocations). A poll that
  found messages is followed at once by the next one, once no more than
  ``newBatchThreshold`` messages are still in flight (so at most
  ``batchSize + newBatchThreshold`` run at once). An empty poll waits with
  randomized exponential backoff from 100 ms up to ``maxPollingInterval``; a
  message this host writes to the queue (an output binding, a poison move) wakes
  the listener at once.
- **Messages.** Decoded as ``messageEncoding`` says and passed as a
  ``func.QueueMessage`` with id, dequeue count, insertion, expiration and
  next-visible times and pop receipt.
- **Outcome.** The function returned (and its outputs were written): the message
  is deleted. It raised: the message becomes visible again after
  ``visibilityTimeout``; when that was delivery ``maxDequeueCount``, it is moved
  to ``<queue>-poison`` instead. A message already past ``maxDequeueCount`` when
  received (its invocations kept dying), or not valid for the encoding, goes to
  the poison queue without an invocation. A poison queue has no poison queue of
  its own: a failure there leaves the message invisible until its 10 minutes end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from .bindings import QueueOutputs
from .functions import Function, Invoker, queue_message
from .hostconfig import MIN_POLLING_INTERVAL, QueueOptions
from .storage import UndecodableMessage, decode_message

log = logging.getLogger("devserver.queues")

POISON_SUFFIX = "-poison"
RECEIVE_VISIBILITY = 600.0  # seconds a received message stays invisible while it is processed
RANDOMIZATION = 0.2


def poison_queue_name(queue_name: str) -> str | None:
    """``<queue>-poison``; None for a queue that is itself a poison queue, or whose poison
    queue name would be too long (63 characters at most)."""
    if queue_name.endswith(POISON_SUFFIX) or len(queue_name + POISON_SUFFIX) > 63:
        return None
    return queue_name + POISON_SUFFIX


class Backoff:
    """Randomized exponential backoff between empty polls: 100 ms, then about 200, 300,
    500, 900 ms ... up to the maximum; back to the minimum once a poll finds messages."""

    def __init__(self, maximum: float, minimum: float = MIN_POLLING_INTERVAL,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.minimum, self.maximum = minimum, max(minimum, maximum)
        self._uniform = uniform
        self._current = 0.0
        self._exponent = 0

    def next_delay(self, found_messages: bool) -> float:
        if found_messages:
            self._current, self._exponent = self.minimum, 1
        elif self._current != self.maximum:
            delay = self.minimum
            if self._exponent > 0:
                delay += self._uniform(1 - RANDOMIZATION, 1 + RANDOMIZATION) * 2 ** (self._exponent - 1) * self.minimum
            if delay < self.maximum:
                self._current = delay
                self._exponent += 1
            else:
                self._current = self.maximum
        return self._current


def _seconds(value: float) -> int:
    """Storage takes visibility timeouts in whole seconds."""
    return max(0, math.ceil(value))


class QueueListener:
    def __init__(self, function: Function, service, options: QueueOptions, invoker: Invoker,
                 outputs: QueueOutputs, *, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.function = function
        self.queue_name = str(function.trigger["queueName"])
        self.poison_name = poison_queue_name(self.queue_name)
        self._queue = service.get_queue_client(self.queue_name)
        self._options = options
        self._invoker = invoker
        self._outputs = outputs
        self._backoff = Backoff(options.max_polling_interval, uniform=uniform)
        self._wake = asyncio.Event()
        self._stopping = False
        self._processing: set[asyncio.Task] = set()
        self._poll_failing = False
        self.renewal_interval = RECEIVE_VISIBILITY / 2

    def notify(self) -> None:
        """A message was just put on this queue: poll now instead of at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        found_since_last_delay = False
        while not self._stopping:
            self._wake.clear()
            batch = await self._receive()
            if not batch:
                delay = self._backoff.next_delay(found_since_last_delay)
                found_since_last_delay = False
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            found_since_last_delay = True
            for message in batch:
                task = asyncio.create_task(self._process(message), name=f"{self.function.name}:{message.id}")
                self._processing.add(task)
                task.add_done_callback(self._processing.discard)
            while len(self._processing) > self._options.new_batch_threshold and not self._stopping:
                await asyncio.wait(set(self._processing), return_when=asyncio.FIRST_COMPLETED)

    async def drain(self, grace: float) -> None:
        """After ``stop()``: let invocations in flight finish for up to ``grace`` seconds,
        then cancel them (their messages are made visible again at once)."""
        if self._processing:
            await asyncio.wait(set(self._processing), timeout=grace)
        for task in list(self._processing):
            task.cancel()
        if self._processing:
            await asyncio.wait(set(self._processing), timeout=5)

    async def _receive(self) -> list:
        try:
            batch = [message async for message in self._queue.receive_messages(
                messages_per_page=self._options.batch_size, max_messages=self._options.batch_size,
                visibility_timeout=_seconds(RECEIVE_VISIBILITY))]
        except ResourceNotFoundError:
            self._poll_failed("queue '%s' does not exist; the listener keeps polling for it", self.queue_name)
            return []
        except AzureError as error:
            self._poll_failed("polling queue '%s' failed (%s); the listener keeps trying",
                              self.queue_name, type(error).__name__)
            return []
        if self._poll_failing:
            log.info("queue '%s' answers again", self.queue_name)
            self._poll_failing = False
        return batch

    def _poll_failed(self, message: str, *args) -> None:
        if not self._poll_failing:  # once per outage, not once per poll
            log.warning(message, *args)
            self._poll_failing = True

    async def _process(self, message) -> None:
        receipt = [message.pop_receipt]
        try:
            if message.dequeue_count > self._options.max_dequeue_count:
                await self._move_to_poison(message, receipt)
                return
            try:
                body = decode_message(message.content, self._options.message_encoding)
            except UndecodableMessage as error:
                log.warning("Message id=%s on queue '%s' cannot be decoded: %s.", message.id, self.queue_name, error)
                await self._move_to_poison(message, receipt)
                return
            trigger = queue_message(body, id=message.id, dequeue_count=message.dequeue_count,
                                    inserted_on=message.inserted_on, expires_on=message.expires_on,
                                    next_visible_on=message.next_visible_on, pop_receipt=message.pop_receipt)
            renewal = asyncio.create_task(self._keep_invisible(message, receipt))
            try:
                invocation = await self._invoker.invoke(
                    self.function, trigger, f"New queue message detected on '{self.queue_name}'.")
                succeeded = invocation.succeeded
                if succeeded:
                    try:
                        await self._outputs.write(invocation)
                    except Exception:  # noqa: BLE001 - an output that cannot be written fails the invocation
                        log.exception("Executed 'Functions.%s' (Failed, Id=%s): its outputs could not be written",
                                      self.function.name, invocation.id)
                        succeeded = False
            finally:
                renewal.cancel()
            if succeeded:
                await self._delete(message, receipt)
            elif self.poison_name:
                if message.dequeue_count >= self._options.max_dequeue_count:
                    await self._move_to_poison(message, receipt)
                else:
                    await self._update_visibility(message, receipt, self._options.visibility_timeout)
            # else: a poison queue's failed message stays invisible until RECEIVE_VISIBILITY ends
        except asyncio.CancelledError:
            # The host is stopping: make the message visible again now, not in 10 minutes.
            await asyncio.shield(self._update_visibility(message, receipt, 0))
            raise
        except AzureError as error:
            log.error("Queue '%s', message id=%s: storage failed after the invocation (%s)",
                      self.queue_name, message.id, type(error).__name__)

    async def _keep_invisible(self, message, receipt: list) -> None:
        while True:
            await asyncio.sleep(self.renewal_interval)
            await self._update_visibility(message, receipt, RECEIVE_VISIBILITY)

    async def _update_visibility(self, message, receipt: list, seconds: float) -> None:
        try:
            updated = await self._queue.update_message(message.id, pop_receipt=receipt[0],
                                                       visibility_timeout=_seconds(seconds))
            receipt[0] = updated.pop_receipt
        except (ResourceNotFoundError, HttpResponseError) as error:
            # Gone, or someone else holds it now (pop receipt mismatch): nothing to release.
            log.debug("could not update message %s on '%s': %s", message.id, self.queue_name, error)

    async def _delete(self, message, receipt: list) -> None:
        try:
            await self._queue.delete_message(message.id, receipt[0])
        except (ResourceNotFoundError, HttpResponseError) as error:
            log.debug("could not delete message %s on '%s': %s", message.id, self.queue_name, error)

    async def _move_to_poison(self, message, receipt: list) -> None:
        if not self.poison_name:
            return  # as the host: no poison queue, the message stays invisible until RECEIVE_VISIBILITY ends
        log.warning("Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                    self._options.max_dequeue_count, self.poison_name)
        await self._outputs.send(self.poison_name, message.content)  # the text as received, still encoded
        await self._delete(message, receipt)

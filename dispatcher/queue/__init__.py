"""The queue port: chunk messages between the gateway and the workers.

Semantics are SQS's, so that the embedded queue and SQS behave alike: at-least-once delivery,
a visibility timeout during which a received message is hidden from other consumers, a
receipt that must be shown to delete or extend it, and a dead-letter queue for messages
received too often (redrive) or refused by the worker (poison).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Queue", "QueuedMessage", "QueueStats", "DeadLetter"]


@dataclass(frozen=True)
class QueuedMessage:
    id: str
    body: str
    receipt: str
    receive_count: int


@dataclass(frozen=True)
class DeadLetter:
    id: str
    body: str
    reason: str
    receive_count: int
    created_at: int


@dataclass(frozen=True)
class QueueStats:
    """How many messages are where, as far as the queue can tell (None: it can't; SQS's
    figures are approximate). ``in_flight``: received and not yet acknowledged (hidden);
    ``delayed``: sent with a delay, not visible yet; ``dead_letters``: in the DLQ."""

    visible: int
    in_flight: int | None
    delayed: int | None
    dead_letters: int | None


class Queue(Protocol):
    #: The largest message body the queue takes, in bytes (None: no limit that matters here).
    max_message_bytes: int | None
    #: The most messages one ``receive`` returns, whatever is asked (SQS: 10); None: as many
    #: as asked, when that many are visible.
    max_receive: int | None

    async def send_batch(self, bodies: Sequence[str]) -> None:
        """Enqueue all of ``bodies`` durably, or raise (then none or some may be enqueued)."""

    async def receive(self, max_messages: int, wait_seconds: float) -> list[QueuedMessage]:
        """Up to ``max_messages``, waiting at most ``wait_seconds`` for the first one."""

    async def ack(self, messages: Sequence[QueuedMessage]) -> None:
        """Delete processed messages."""

    async def extend(self, message: QueuedMessage, seconds: float) -> None:
        """Keep ``message`` hidden for ``seconds`` more (from now)."""

    async def dead_letter(self, message: QueuedMessage, reason: str) -> None:
        """Move a message the worker can never process to the DLQ, with the reason."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The dead-lettered messages, with reasons (for operators)."""

    async def dead_letter_count(self) -> int:
        """How many messages are in the DLQ (approximate where the queue only knows that)."""

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on the queue (those of ``ids``; all when None), as new
        messages with no receive history; return how many went back."""

    async def purge_dead_letters(self) -> int:
        """Delete every dead letter; return how many there were."""

    async def depth(self) -> int:
        """Messages waiting (approximate where the queue only knows that)."""

    async def stats(self) -> QueueStats:
        """The queue's messages by state (for ``dispatcher_queue_messages``)."""

    async def close(self) -> None: ...

"""How many messages a worker asks of each consume: about a byte budget's worth.

The consumer API takes a message count, not bytes, and a worker's inference and label
topics hold messages from ~100 bytes (a label, a single event) to ~100 kB (an SDK batch
envelope), often interleaved in one batch. The count is the budget over an estimate of
the largest message: the largest of the last batch, or the previous estimate decayed by
10% per batch if that was larger, so a batch of small messages between large ones does
not open the next batch to 2,000 large ones.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

#: Message size assumed before the first batch (an SDK envelope of ~300 events).
FIRST_MESSAGE_BYTES = 65_536
#: Per batch, the estimate of the largest message falls at most this much.
DECAY = 0.9


class BatchSizer:
    """``count`` messages per consume: ``max_bytes`` over the largest-message estimate,
    at most ``max_messages``, at least one; :meth:`observe` each consumed batch."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.message_bytes = float(FIRST_MESSAGE_BYTES)
        self.count = self._count()

    def observe(self, msgs: Sequence[Sized]) -> None:
        """A consumed batch (``len`` of a message is the size of its value)."""
        if msgs:
            biggest = max(map(len, msgs))
            self.message_bytes = max(float(biggest), DECAY * self.message_bytes)
            self.count = self._count()

    def _count(self) -> int:
        fit = int(self.max_bytes / max(self.message_bytes, 1.0))
        return max(1, min(self.max_messages, fit))

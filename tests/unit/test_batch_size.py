"""The message count of each consume: about the byte budget, led by the largest messages."""

from __future__ import annotations

from driftline.streams.batch_size import FIRST_MESSAGE_BYTES, BatchSizer


def _msgs(*sizes: int) -> list[bytes]:
    return [bytes(n) for n in sizes]


def test_the_first_consume_assumes_large_messages() -> None:
    assert BatchSizer(2000, 16 * 2**20).count == 16 * 2**20 // FIRST_MESSAGE_BYTES == 256
    assert BatchSizer(100, 16 * 2**20).count == 100  # never more than the message cap
    assert BatchSizer(2000, 1024).count == 1  # nor fewer than one


def test_small_messages_reach_the_message_cap_and_large_ones_the_byte_budget() -> None:
    small = BatchSizer(2000, 16 * 2**20)
    for _ in range(40):  # the estimate falls 10% per batch towards the largest seen
        small.observe(_msgs(*[500] * 200))
    assert small.count == 2000
    big = BatchSizer(2000, 16 * 2**20)
    big.observe(_msgs(130_000, 90, 130_000))
    assert big.count == 16 * 2**20 // 130_000 == 129
    big.observe([])  # nothing consumed: nothing learnt
    assert big.count == 129


def test_a_batch_of_labels_between_envelopes_does_not_open_the_next_to_2000_envelopes() -> None:
    s = BatchSizer(2000, 16 * 2**20)
    s.observe(_msgs(*[100] * 100, 130_000))  # labels and one envelope
    s.observe(_msgs(*[100] * 129))  # only labels this time
    # at most 10% more than before: 143 envelopes of 130 kB are ~1.1x the budget
    assert s.count == int(16 * 2**20 / (0.9 * 130_000)) == 143
    for _ in range(200):
        s.observe(_msgs(*[100] * 50))
    assert s.count == 2000  # labels only for a while: back to the cap

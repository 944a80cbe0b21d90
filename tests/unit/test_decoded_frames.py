"""Frames between a worker and its decode process give back exactly what was framed."""

from __future__ import annotations

import numpy as np
import pytest
from decode_corpus import assert_same, decoded, messages

from driftline.schemas.codecs import decode_inference
from driftline.schemas.decoded_frames import (
    decode_batches,
    decode_messages,
    encode_batches,
    encode_messages,
)
from driftline.schemas.models import DecodeResult


@pytest.mark.parametrize("seed", range(6))
def test_decoded_batches_round_trip_exactly(seed: int) -> None:
    result = decoded(messages(seed))
    assert result.rejections and len(result.batches) == 3  # the corpus has both
    assert any(b.text is not None for b in result.batches.values())
    assert any(b.prediction_label is not None for b in result.batches.values())
    back = decode_batches(encode_batches(result))
    assert_same(result, back)
    for b in back.batches.values():  # owned, writable arrays (the frame is not kept)
        assert b.numeric.flags.writeable and b.offset.flags.writeable


def test_decoding_framed_messages_is_decoding_the_messages() -> None:
    values = messages(7)
    n = len(values)
    parts, offs = [i % 4 for i in range(n)], list(range(100, 100 + n))
    stamps = [1.6e9 + i for i in range(n)]
    stamps[3] = float("nan")
    got = decode_messages(encode_messages(values, parts, offs, stamps))
    assert got[0] == values and got[1] == parts and got[2] == offs
    assert np.array_equal(got[3], stamps, equal_nan=True)
    assert_same(decode_inference(*got[:1], topic="t", partitions=got[1], offsets=got[2],
                                  timestamps=got[3]),
                 decode_inference(values, topic="t", partitions=parts, offsets=offs,
                                  timestamps=stamps))


def test_empty_batches_and_messages_round_trip() -> None:
    assert decode_messages(encode_messages([], [], [], [])) == ([], [], [], [])
    empty = DecodeResult(batches={}, rejections=[], events=0)
    assert_same(decode_batches(encode_batches(empty)), empty)
    assert decode_messages(encode_messages([b""], [0], [5], [1.0]))[0] == [b""]


@pytest.mark.parametrize("cut", [0, 3, 10, -1])
def test_a_damaged_frame_raises_value_error(cut: int) -> None:
    frame = encode_batches(decoded(messages(1)))
    with pytest.raises(ValueError):
        decode_batches(frame[:cut] if cut else b"")
    with pytest.raises(ValueError):
        decode_batches(frame + b"x")

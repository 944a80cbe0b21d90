"""A decode process answers in order with what decoding in the worker gives, and a batch
it cannot answer (it died, or failed) is reported lost, never wrong."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from decode_corpus import assert_same, decoded, messages

from driftline.schemas.limits import DEFAULT_LIMITS, Limits
from driftline.streams import decode_process
from driftline.streams.decode_process import MAX_FAILURES, DecodeProcess, usable_cpus, wanted


def _lists(values: list[bytes]) -> tuple[list[bytes], list[int], list[int], list[float]]:
    n = len(values)
    return (values, [i % 4 for i in range(n)], list(range(100, 100 + n)),
            [1.6e9 + i for i in range(n)])


@pytest.fixture
def proc() -> Iterator[DecodeProcess]:
    p = DecodeProcess(DEFAULT_LIMITS, "t")
    yield p
    p.close()


def _kill_child(p: DecodeProcess) -> None:
    assert p._proc is not None
    os.kill(p._proc.pid, signal.SIGKILL)
    p._proc.wait(10)


def test_batches_in_flight_come_back_in_order_as_decoded_here(proc: DecodeProcess) -> None:
    batches = [messages(seed) for seed in range(4)]
    tickets = [proc.submit(*_lists(batches[0])), proc.submit(*_lists(batches[1]))]
    for i, values in enumerate(batches):
        got = proc.result(tickets.pop(0))
        assert got is not None
        assert_same(got, decoded(values))
        if i + 2 < len(batches):
            tickets.append(proc.submit(*_lists(batches[i + 2])))
    assert proc.failures == 0 and proc.restarts == 0


def test_results_are_taken_in_order(proc: DecodeProcess) -> None:
    first = proc.submit(*_lists(messages(1)))
    second = proc.submit(*_lists(messages(2)))
    with pytest.raises(RuntimeError):
        proc.result(second)
    assert proc.result(first) is not None and proc.result(second) is not None


def test_the_limits_of_the_worker_apply_in_the_child() -> None:
    p = DecodeProcess(Limits(max_model_id_length=2), "t")
    try:
        values = [orjson.dumps({"model": "abc", "features": {"a": 1.0}}),
                  orjson.dumps({"model": "ab", "features": {"a": 1.0}})]
        got = p.result(p.submit(*_lists(values)))
        assert got is not None and list(got.batches) == ["ab"]
        assert [r.reason.split(":")[0] for r in got.rejections] == ["string_too_long"]
    finally:
        p.close()


def test_a_dead_child_loses_its_batches_and_a_new_one_takes_the_next(
    proc: DecodeProcess,
) -> None:
    a = proc.submit(*_lists(messages(1) * 20))
    assert proc.result(a) is not None
    spent = proc.cpu_seconds
    assert spent > 0
    assert proc._proc is not None
    os.kill(proc._proc.pid, signal.SIGSTOP)  # so that it cannot answer b or c first
    b = proc.submit(*_lists(messages(2)))
    c = proc.submit(*_lists(messages(3)))
    _kill_child(proc)
    assert proc.result(b) is None  # lost: the caller decodes it itself
    assert proc.result(c) is None  # sent to the same child: lost with it
    assert proc.failures == 1 and proc.restarts == 1 and proc.usable
    d = proc.submit(*_lists(messages(4)))
    got = proc.result(d)
    assert got is not None and proc.failures == 0
    assert proc.cpu_seconds >= spent  # the ended child's time stays counted
    assert_same(got, decoded(messages(4)))


def test_a_child_that_stops_answering_is_replaced() -> None:
    p = DecodeProcess(DEFAULT_LIMITS, "t", answer_timeout_s=1.0)
    try:
        t = p.submit(*_lists(messages(1)))
        assert p._proc is not None
        os.kill(p._proc.pid, signal.SIGSTOP)  # alive, never answering
        stopped = p._proc
        assert p.result(t) is None  # after the timeout, not never
        assert stopped.poll() is not None and p.restarts == 1  # killed, to be replaced
        got = p.result(p.submit(*_lists(messages(2))))
        assert got is not None
        assert_same(got, decoded(messages(2)))
    finally:
        p.close()


def test_after_repeated_failures_batches_are_decoded_by_the_caller(
    proc: DecodeProcess, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # a child that raises on a batch answers so (and is replaced), like one that dies
    monkeypatch.setattr(decode_process, "encode_messages", lambda *args: b"\x05garbage")
    for _ in range(MAX_FAILURES):
        assert proc.usable
        t = proc.submit(*_lists(messages(1)))
        assert proc.result(t) is None
    assert "failed on a batch" in caplog.text and "Traceback" in caplog.text
    assert proc.failures == MAX_FAILURES and proc.restarts == MAX_FAILURES - 1
    assert not proc.usable and proc.submit(*_lists(messages(1))) is None


def test_discard_forgets_pending_batches(proc: DecodeProcess) -> None:
    proc.submit(*_lists(messages(1)))
    proc.submit(*_lists(messages(2)))
    proc.discard()
    t = proc.submit(*_lists(messages(3)))
    got = proc.result(t)
    assert got is not None
    assert_same(got, decoded(messages(3)))


def test_two_large_batches_in_flight_do_not_block_each_other(proc: DecodeProcess) -> None:
    # each request and answer is far larger than a pipe buffer: the parent writes the
    # second request while the child writes the first answer
    big = messages(5) * 40  # 12,000 messages, ~3 MB
    done: list[bool] = []

    def run() -> None:
        t1 = proc.submit(*_lists(big))
        t2 = proc.submit(*_lists(big))
        done.append(proc.result(t1) is not None and proc.result(t2) is not None)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(120)
    assert done == [True]


@pytest.mark.parametrize(("v2", "v1", "cpus"), [
    ("max 100000", None, 4), ("150000 100000", None, 1.5), ("50000 100000", None, 0.5),
    (None, ("200000", "100000"), 2), (None, ("-1", "100000"), 4), (None, None, 4),
    ("garbage", ("100000", "100000"), 1),
])  # fmt: skip
def test_usable_cpus_are_the_affinity_capped_by_a_cgroup_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, v2: str | None,
    v1: tuple[str, str] | None, cpus: float,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    files = []
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    files.append((str(tmp_path / "cpu.max"), None))
    if v1 is not None:
        (tmp_path / "quota").write_text(v1[0] + "\n")
        (tmp_path / "period").write_text(v1[1] + "\n")
    files.append((str(tmp_path / "quota"), str(tmp_path / "period")))
    monkeypatch.setattr(decode_process, "CGROUP_CPU_FILES", tuple(files))
    assert usable_cpus() == cpus
    assert wanted("auto") == (cpus >= 2)
    assert wanted("on") and not wanted("off")


def test_one_cpu_means_no_decode_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert usable_cpus() == 1 and not wanted("auto")

"""The CLI as a user runs it: the one-minute demo, clean shutdown, live reference changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from driftline.streams.admin import iter_to_end, read_compacted

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "driftline.streams"]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_up_shows_an_alert_and_exits_zero() -> None:
    t0 = time.monotonic()
    res = subprocess.run([*CLI, "up", "--duration", "50", "--drift-at", "10", "--models", "3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    alerts = [x for x in res.stdout.splitlines() if x.startswith("ALERT ")]
    assert alerts and alerts[0].startswith("ALERT data drift on model-2"), res.stdout
    assert "feature f7" in alerts[0]
    # the drift is in every region: the segments' alerts name their segment
    assert any(x.startswith("ALERT data drift on model-2 segment region=") for x in alerts), alerts
    assert "ALERT" not in res.stderr  # progress only: alert lines are for stdout
    assert time.monotonic() - t0 < 60


def test_worker_stops_cleanly_on_sigterm(kafka_bootstrap: str,
                                         unique_name: Callable[[str], str]) -> None:
    env = {**os.environ, "DRIFTLINE_GROUP_ID": unique_name("g"),
           "DRIFTLINE_INFERENCE_TOPIC": unique_name("inf"), "DRIFTLINE_STATE_TOPIC": unique_name("st"),
           "DRIFTLINE_STATUS_TOPIC": unique_name("status")}
    proc = subprocess.Popen([*CLI, "worker", "--bootstrap", kafka_bootstrap, "--metrics-port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(8)
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=15)
    assert rc == 0
    assert time.monotonic() - t < 10
    assert not _children(proc.pid)


def test_up_leaves_no_broker_behind_after_sigint() -> None:
    proc = subprocess.Popen([*CLI, "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(10)
    kids = _children(proc.pid)
    assert kids, "the embedded broker should be a child process"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    time.sleep(1)
    assert not [k for k in kids if _alive(k)]


def test_reference_set_is_picked_up_live(kafka_bootstrap: str, unique_name: Callable[[str], str],
                                         tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "ref.csv"
    rows = ["f0,f1"] + [f"{a:.4f},{b:.4f}" for a, b in rng.normal(size=(2000, 2))]
    path.write_text("\n".join(rows) + "\n")
    topic = unique_name("refs")
    env = {**os.environ, "DRIFTLINE_REFERENCES_TOPIC": topic}
    res = subprocess.run([*CLI, "reference", "set", "--model", "m1", "--file", str(path),
                          "--bootstrap", kafka_bootstrap], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "reference m1@" in res.stdout
    refs = read_compacted({"bootstrap.servers": kafka_bootstrap}, topic)
    assert b"m1" in refs and b'"size":2000' in refs[b"m1"]


def test_produce_sends_outcomes_at_its_error_rate(kafka_bootstrap: str,
                                                  unique_name: Callable[[str], str]) -> None:
    """`produce` events carry `outcome` (error at `--error-rate`) for the golden signals."""
    topic = unique_name("inf")
    env = {**os.environ, "DRIFTLINE_INFERENCE_TOPIC": topic}
    res = subprocess.run([*CLI, "produce", "--bootstrap", kafka_bootstrap, "--models", "2",
                          "--events", "3000", "--rate", "0", "--single", "--error-rate", "0.05"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    events = [orjson.loads(m.value()) for m in iter_to_end({"bootstrap.servers": kafka_bootstrap},
                                                            topic, timeout=60)]
    outcomes = [e["outcome"] for e in events]
    assert len(outcomes) >= 3000 and set(outcomes) == {"ok", "error"}
    assert 0.035 < outcomes.count("error") / len(outcomes) < 0.065

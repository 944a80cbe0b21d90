"""The Faust runtime on a real broker: ``driftline worker --runtime faust`` as a user runs it.

SDK events in, drift alerts read back from the alerts topic; a worker stopped with SIGTERM
mid-stream and a new one started: the windows resume from the Faust table.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from workers import produce_sdk

from driftline.detectors.reference import ReferenceProfile, build_profile
from driftline.streams.admin import read_compacted
from driftline.streams.faust_app import changelog_topic, faust_topic_specs
from driftline.streams.model_state import ModelState
from driftline.streams.settings import Settings
from driftline.streams.subscriber import AlertSubscriber
from driftline.streams.synthetic import DriftSpec, SyntheticModels

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "driftline.streams"]


def overrides(bootstrap: str, unique: Callable[[str], str]) -> dict[str, Any]:
    p = unique("fa")
    return {
        "bootstrap_servers": bootstrap, "group_id": f"{p}.group",
        "inference_topic": f"{p}.inference", "labels_topic": f"{p}.labels",
        "references_topic": f"{p}.references", "alerts_topic": f"{p}.alerts",
        "deadletter_topic": f"{p}.deadletter", "changes_topic": f"{p}.changes",
        "state_topic": f"{p}.state", "status_topic": f"{p}.status", "partitions": 4,
        "auto_reference_events": 3000, "pane_size": 500, "min_samples": 1000,
        "snapshot_interval_s": 0.5, "batch_timeout_s": 0.05, "metrics_port": 0,
        "metrics_host": "127.0.0.1",
    }  # fmt: skip


class FaustWorker:
    """``driftline worker --runtime faust`` in a child process."""

    def __init__(self, fields: dict[str, Any], log_path: Path) -> None:
        env = {**os.environ, **{f"DRIFTLINE_{k.upper()}": str(v) for k, v in fields.items()}}
        self.log_path = log_path
        # its own working and data directories, to see that it leaves nothing in either
        self.cwd = log_path.with_suffix(".cwd")
        self.data_dir = log_path.with_suffix(".data")
        self.cwd.mkdir()
        self.data_dir.mkdir()
        env["DRIFTLINE_DATA_DIR"] = str(self.data_dir)
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen([*CLI, "worker", "--runtime", "faust"], env=env,
                                     cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT)
        self.port = 0

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> tuple[int, str]:
        if not self.port:
            m = re.search(r"metrics on http://[^:]+:(\d+)/metrics", self.log)
            if m is None:
                return 0, ""
            self.port = int(m.group(1))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.get("/healthz")[0] == 200, timeout, "faust worker ready",
                 lambda: self.log[-3000:])

    def events_applied(self) -> dict[str, float]:
        """``driftline_worker_events_total`` per model, from a real scrape."""
        body = self.get("/metrics")[1]
        return {m: float(v) for m, v in
                re.findall(r'^driftline_worker_events_total\{model="([^"]+)"\} (\S+)$', body, re.M)}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process; it must exit by itself, with status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("faust worker did not exit on the signal\n"
                                 + self.log[-3000:]) from None
        finally:
            self._log.close()
        return rc


@pytest.fixture
def faust_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], FaustWorker]]:
    started: list[FaustWorker] = []

    def start(fields: dict[str, Any]) -> FaustWorker:
        w = FaustWorker(fields, tmp_path / f"faust-worker-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{detail()}")


def status(s: Settings) -> dict[str, dict[str, Any]]:
    """Status records by state key (model@partition)."""
    return {k.decode(): orjson.loads(v) for k, v in read_compacted(s.kafka(), s.status_topic).items()}


def applied_by_model(s: Settings) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in status(s).values():
        out[r["model"]] = out.get(r["model"], 0) + int(r["events_applied"])
    return out


def table_states(s: Settings) -> dict[str, ModelState]:
    """The model states in the table's changelog (last value per key), restored."""
    refs = {k.decode(): ReferenceProfile.from_json(v)
            for k, v in read_compacted(s.kafka(), s.references_topic).items()}
    blobs = read_compacted(s.kafka(), changelog_topic(s))
    out = {}
    for k, blob in blobs.items():
        model = k.decode().rsplit("@", 1)[0]
        out[model] = ModelState.restore(blob, refs.get(model), s.monitor_config())
    return out


def test_faust_worker_sdk_events_to_drift_alert_and_live_reference(
    kafka_bootstrap: str, unique_name: Callable[[str], str], faust_worker: Any
) -> None:
    fields = overrides(kafka_bootstrap, unique_name)
    s = Settings(**fields)
    w = faust_worker(fields)
    w.wait_ready()
    names = [t.name for t in faust_topic_specs(s)]
    assert changelog_topic(s) in names
    # a reference for model-2 set while the worker runs (as `driftline reference set` does)
    gen = SyntheticModels(3, seed=4, drift=(DriftSpec("model-1", "f7", 8000, 1.0),))
    ref_gen = SyntheticModels(3, seed=4)  # the same distributions: no drift for model-2
    evs = ref_gen.events("model-2", 4000)
    cols = {k: np.array([e["features"][k] for e in evs]) for k in ref_gen.names}  # type: ignore[index]
    ref = build_profile("model-2", cols, prediction=[e["prediction"] for e in evs],
                        source="test")
    prod = Producer(s.kafka())
    prod.produce(s.references_topic, ref.to_json(), key=b"model-2")
    assert prod.flush(10) == 0
    wait_for(lambda: f"reference {ref.reference_id} for model model-2 (source test)" in w.log,
             30, "the live reference picked up", lambda: w.log[-3000:])
    sent = produce_sdk(s, gen, 16_000)
    wait_for(lambda: applied_by_model(s) == {m: 16_000 for m in gen.models}, 120,
             f"{sent} events applied (status topic)",
             lambda: f"applied: {applied_by_model(s)}\n{w.log[-3000:]}")
    alerts = list(AlertSubscriber(s.kafka(), s.alerts_topic, timeout=30))
    firing = [a for a in alerts if a.state == "firing"]
    assert firing, "no alert on the alerts topic\n" + w.log[-3000:]
    assert {a.model for a in firing} == {"model-1"}
    assert firing[0].feature == "f7" and firing[0].kind == "data"
    assert firing[0].score > firing[0].threshold
    refs = {r["model"]: r["reference"] for r in status(s).values()}
    assert refs["model-2"] == ref.reference_id  # the live reference, not one built from events
    assert refs["model-1"].startswith("model-1@") and refs["model-1"] != ref.reference_id
    assert w.events_applied() == {m: 16_000.0 for m in gen.models}
    assert w.stop() == 0


def test_faust_worker_restart_resumes_windows_from_the_table(
    kafka_bootstrap: str, unique_name: Callable[[str], str], faust_worker: Any
) -> None:
    fields = overrides(kafka_bootstrap, unique_name)
    s = Settings(**fields)
    gen = SyntheticModels(2, seed=2)
    w1 = faust_worker(fields)
    w1.wait_ready()
    first = produce_sdk(s, gen, 6000)
    wait_for(lambda: w1.events_applied() == {m: 6000.0 for m in gen.models}, 90,
             f"{first} events applied", lambda: w1.log[-3000:])
    assert w1.stop(signal.SIGTERM) == 0  # final checkpoint, then a clean exit
    # Faust's data directory was under DRIFTLINE_DATA_DIR and is gone; none in the cwd
    assert list(w1.cwd.iterdir()) == [] and list(w1.data_dir.iterdir()) == []
    before = table_states(s)
    assert set(before) == set(gen.models)
    for st in before.values():  # the last snapshot covers everything applied
        assert st.events_applied == 6000 and st.monitor is not None
    seq = {m: st.monitor.ring.seq for m, st in before.items() if st.monitor is not None}
    ref_ids = {m: st.reference.reference_id for m, st in before.items() if st.reference}
    assert all(v > 0 for v in seq.values())

    w2 = faust_worker(fields)
    w2.wait_ready()
    second = produce_sdk(s, gen, 4000)
    wait_for(lambda: applied_by_model(s) == {m: 10_000 for m in gen.models}, 90,
             f"{second} more events applied",
             lambda: f"applied: {applied_by_model(s)}\n{w2.log[-3000:]}")
    # the new process applied only the new events: nothing from the first run again
    assert w2.events_applied() == {m: 4000.0 for m in gen.models}
    assert w2.stop(signal.SIGINT) == 0
    assert "state restored (6000 events applied so far)" in w2.log
    after = table_states(s)
    for m, st in after.items():
        assert st.events_applied == 10_000
        assert st.reference is not None and st.reference.reference_id == ref_ids[m]
        assert st.monitor is not None and st.monitor.ring.seq == seq[m] + 4000


def test_faust_worker_stopped_amid_a_backlog_exits_and_the_next_applies_the_rest(
    kafka_bootstrap: str, unique_name: Callable[[str], str], faust_worker: Any
) -> None:
    fields = overrides(kafka_bootstrap, unique_name)
    s = Settings(**fields)
    gen = SyntheticModels(2, seed=6)
    total = 40_000
    produce_sdk(s, gen, total)  # a backlog: fetched records wait while the agent works
    w1 = faust_worker(fields)
    w1.wait_ready()
    wait_for(lambda: sum(w1.events_applied().values()) >= 8000, 90, "events applied",
             lambda: w1.log[-3000:])
    # events still arrive after the final checkpoint: they are applied and acked too
    assert w1.stop(signal.SIGTERM) == 0
    w2 = faust_worker(fields)
    w2.wait_ready()
    wait_for(lambda: applied_by_model(s) == {m: total for m in gen.models}, 90,
             f"{total} events per model applied",
             lambda: f"applied: {applied_by_model(s)}\n{w2.log[-3000:]}")
    assert w2.stop() == 0
    # each event applied by exactly one of the two processes (their final counts)
    applied = [int(re.findall(r"stopped: consumed=\d+ applied=(\d+)", w.log)[-1])
               for w in (w1, w2)]
    assert sum(applied) == total * len(gen.models)
    for m, st in table_states(s).items():
        assert st.events_applied == total, m


def _lag_partitions(exposition: str, topic: str) -> set[str]:
    """Partitions of ``topic`` with a consumer lag series in a worker's exposition."""
    series = re.findall(r'^driftline_worker_consumer_lag_messages\{([^}]*)\}', exposition, re.M)
    labels = [dict(re.findall(r'(\w+)="([^"]*)"', x)) for x in series]
    return {x["partition"] for x in labels if x.get("topic") == topic}


def test_second_faust_worker_joins_mid_stream_and_nothing_is_applied_twice(
    kafka_bootstrap: str, unique_name: Callable[[str], str], faust_worker: Any
) -> None:
    fields = overrides(kafka_bootstrap, unique_name)
    s = Settings(**fields)
    gen = SyntheticModels(4, seed=3)
    a = faust_worker(fields)
    a.wait_ready()
    produce_sdk(s, gen, 4000)
    wait_for(lambda: sum(a.events_applied().values()) == 16_000, 90, "first part applied",
             lambda: a.log[-3000:])
    b = faust_worker(fields)  # joins the group: partitions move, states follow via the table
    b.wait_ready()
    produce_sdk(s, gen, 4000)
    wait_for(lambda: applied_by_model(s) == {m: 8000 for m in gen.models}, 120,
             "every event applied once (status topic)",
             lambda: f"applied: {applied_by_model(s)}\n{a.log[-2000:]}{b.log[-2000:]}")
    # a partition's lag is reported by its owner only: the one that gave it up forgot it
    lagged = [_lag_partitions(w.get("/metrics")[1], s.inference_topic) for w in (a, b)]
    assert lagged[1] and not lagged[0] & lagged[1], lagged
    assert b.stop() == 0 and a.stop() == 0
    # each event was applied by exactly one of the two processes (their final counts)
    applied = [int(re.findall(r"stopped: consumed=\d+ applied=(\d+)", w.log)[-1]) for w in (a, b)]
    assert sum(applied) == 32_000
    assert applied[1] > 0, "the second worker never got a partition\n" + b.log[-3000:]
    for m, st in table_states(s).items():
        assert st.events_applied == 8000, m

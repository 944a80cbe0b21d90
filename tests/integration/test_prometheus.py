"""The chart's rules and dashboard on a real Prometheus scraping a real worker.

A ``driftline worker`` process on the test broker serves /metrics on a free loopback
port. The SDK sends it, for MODEL, events with an event id and a ``region`` segment whose
feature f3 (and so the prediction) shifts by three standard deviations once the model has
been evaluated, while the share of missing f5 values rises from 5 % to 40 %; the labels of
half of the events (flipped after the drift: the model's concept rule fires on their
error rate), a duplicate
label now and then (counted unmatched), and a shadow candidate (CANDIDATE, same event
ids, disagreeing scores); plus one undecodable message. A second model (TIME_MODEL) has
event-time windows (a model config file) and sends an event behind its watermark now
and then. A real ``prometheus`` (Debian's package) scrapes the worker every second and
evaluates the chart's rule files (helm/driftline/files/rules) every second. Through the
HTTP API the test then asserts that:

* the worker target is up and the driftline series exist (events, per-column and
  multivariate drift scores, segments, labels and model quality, data quality,
  confidence, shadow agreement, late events and the watermark);
* every recording rule produces values and every rule is healthy;
* DriftlineDriftFiring goes to firing for MODEL for every kind: data, prediction,
  quality, concept and shadow;
* every expression of the dashboard (panels, annotations, template variables) and every
  rule expression evaluates without error via /api/v1/query, with a non-empty result
  unless it is an alert condition that must stay false on a healthy worker
  (FALSE_WHEN_HEALTHY); every driftline metric an expression reads has series.

Test copy of the rules: the production files hold alerts for minutes (``for: 10m``) and
record every 30 s; the copy Prometheus loads has every ``for:`` shortened to
SHORT_FOR and every group interval set to 1 s. The expressions are unchanged.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from driftline.streams.producer import DriftlineProducer

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "helm" / "driftline" / "files" / "rules").glob("*.yaml"))
DASHBOARD = ROOT / "helm" / "driftline" / "files" / "dashboards" / "driftline-overview.json"
PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)

MODEL = "pm-drift"
CANDIDATE = "pm-drift-v2"  # shadow candidate of MODEL
TIME_MODEL = "pm-time"  # event-time windows (MODEL_CONFIG)
FEATURES = tuple(f"f{i}" for i in range(6))
DRIFTED = "f3"
SPARSE = "f5"  # missing in 5 % of the events, 40 % after the drift
REGIONS = ("eu", "us", "apac")
KINDS = {"data", "prediction", "quality", "concept", "shadow"}
MODEL_CONFIG = f"""
models:
  {TIME_MODEL}:
    window: 2s
    pane: 500ms
    allowed_lateness: 1s
    late_policy: current
    min_samples: 100
"""
SHORT_FOR = "2s"
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1 s scrape is at least 4 scrapes
# both models selected (Grafana's multi-value regex): the event-time panels read TIME_MODEL
VARIABLES = {"model": f"({MODEL}|{TIME_MODEL})", "statistic": "chi2", "segment": ".*",
             "__rate_interval": RATE_INTERVAL}
MV_STATISTICS = {"mmd_rff", "covariance", "pca_recon"}

# Alert conditions that must evaluate to nothing while the worker is healthy.
FALSE_WHEN_HEALTHY = {
    "DriftlineWorkerNotEvaluating": "the model is evaluated every pane",
    "DriftlineDeadLetterRate": "one dead letter in the whole run, far below 1/s",
    "DriftlineConsumerLagGrowing": "the worker keeps up: lag is far below 10,000",
    "DriftlineWorkerDown": "the worker is up",
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def metric_names(expr: str) -> set[str]:
    """driftline series names a PromQL expression reads (string literals removed)."""
    return {t for t in _IDENT.findall(_STRING.sub('""', expr)) if "driftline" in t}


def substitute(expr: str) -> str:
    """Grafana's variables as the dashboard would send them for the two models."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", VARIABLES[name]).replace("$" + name,
                                                                        VARIABLES[name])
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
    return expr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expression) of every rule in the chart's rule files."""
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            out += [(r.get("alert") or r["record"], r["expr"]) for r in group["rules"]]
    return out


def dashboard_exprs() -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(panel title, expr) of every panel target and annotation; (variable, match, label)
    of every ``label_values`` template variable."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend((p.get("title", "?"), t["expr"]) for t in p.get("targets", [])
                         if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    exprs += [(f"annotation {a['name']}", a["expr"]) for a in dash["annotations"]["list"]
              if "expr" in a]
    variables = []
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            m = _LABEL_VALUES.match(query["query"].strip())
            assert m, f"variable {var['name']}: not a label_values() query: {query['query']}"
            variables.append((var["name"], m["match"], m["label"]))
    return exprs, variables


def write_test_rules(dest: Path) -> list[Path]:
    """The chart's rule files with ``for:`` shortened and 1 s group intervals."""
    dest.mkdir()
    out = []
    for path in RULES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT_FOR
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        out.append(target)
    return out


class Prom:
    """The HTTP API of a running Prometheus."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422: the body says why
            body = json.loads(exc.read() or b"{}")
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr``; fails on any error."""
        body = self.get("/api/v1/query", query=expr)
        assert body.get("status") == "success", f"{expr!r}: {body}"
        assert not body.get("warnings"), f"{expr!r}: {body['warnings']}"
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", f"{expr!r}: {data['resultType']}"
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        problem = alive()
        assert problem is None, problem
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Stream:
    """SDK events of MODEL at ~2,000/s until stopped, with segments, event ids, labels of
    every other event and a shadow candidate of every other event; TIME_MODEL at ~200/s
    with one late event a second. ``drift`` shifts f3 by 3 sd and makes f5 sparser."""

    def __init__(self, config: dict[str, str], topic: str, labels_topic: str) -> None:
        self.producer = DriftlineProducer(config, topic, labels_topic=labels_topic,
                                          batch_size=250, linger_s=0.02)
        self.drift = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="prom-stream")
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        j = FEATURES.index(DRIFTED)
        emit, label = self.producer.emit, self.producer.emit_label
        labels: list[tuple[str, int]] = []  # (event id, label) of the previous round
        step = 0
        while not self._stop.is_set():
            drift = self.drift.is_set()
            x = rng.normal(size=(100, len(FEATURES)))
            if drift:
                x[:, j] += 3.0
            pred = 1.0 / (1.0 + np.exp(-(x[:, 0] + x[:, j])))
            # a calibrated model (error rate ~ 0.3); after the drift the labels flip
            truth = rng.random(100) < (1.0 - pred if drift else pred)
            shadow = np.clip(pred + rng.normal(0.0, 0.2, size=100), 0.0, 1.0)
            missing = rng.random(100) < (0.4 if drift else 0.05)
            latency = rng.gamma(2.0, 4.0, size=100)
            errors = rng.random(100) < 0.05
            # labels arrive one round (~0.05 s) after their predictions
            for eid, y in labels:
                label(MODEL, eid, y)
            if labels:  # a second label for a joined prediction: unmatched
                label(MODEL, labels[0][0], labels[0][1])
            labels = []
            for i in range(100):
                eid = f"{step}-{i}"
                features: dict[str, float | None] = dict(
                    zip(FEATURES, x[i].tolist(), strict=True))
                if missing[i]:
                    features[SPARSE] = None
                emit(MODEL, features, float(pred[i]), event_id=eid,
                     segment={"region": REGIONS[i % len(REGIONS)]},
                     latency_ms=float(latency[i]), outcome="error" if errors[i] else "ok")
                if i % 2 == 0:
                    emit(CANDIDATE, features, float(shadow[i]), event_id=eid, shadow_of=MODEL)
                    labels.append((eid, int(truth[i])))
            now = time.time()
            for i in range(10):
                emit(TIME_MODEL, {"a": float(x[i, 1]), "b": float(x[i, 2])}, ts=now)
            if step % 20 == 0:  # 30 s behind the newest event time: late
                emit(TIME_MODEL, {"a": 0.0, "b": 0.0}, ts=now - 30.0)
            step += 1
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.producer.close(10)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_rules_and_dashboard_on_a_real_prometheus(
    kafka_bootstrap: str, kafka_client_config: dict[str, str],
    unique_name: Callable[[str], str], tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary (Debian: apt-get install prometheus); "
                    "the rules and dashboard were not checked against a real Prometheus")
    prefix = unique_name("prom")
    topic = f"{prefix}.inference"
    metrics_port, prom_port = free_port(), free_port()
    model_config = tmp_path / "models.yaml"
    model_config.write_text(MODEL_CONFIG, encoding="utf-8")

    # -- the worker ---------------------------------------------------------------------
    env = {**os.environ, "DRIFTLINE_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "DRIFTLINE_GROUP_ID": f"{prefix}.group", "DRIFTLINE_PARTITIONS": "1",
           **{f"DRIFTLINE_{t.upper()}_TOPIC": f"{prefix}.{t}" for t in (
               "inference", "labels", "references", "alerts", "deadletter", "changes", "state",
               "status")},
           "DRIFTLINE_METRICS_HOST": "127.0.0.1", "DRIFTLINE_METRICS_PORT": str(metrics_port),
           "DRIFTLINE_AUTO_REFERENCE_EVENTS": "1000", "DRIFTLINE_PANE_SIZE": "250",
           "DRIFTLINE_MIN_SAMPLES": "500", "DRIFTLINE_SNAPSHOT_INTERVAL_S": "1",
           "DRIFTLINE_BATCH_TIMEOUT_S": "0.05", "DRIFTLINE_MODEL_CONFIG_FILE": str(model_config),
           # labels join from the first prediction on (a model with a concept rule); the
           # error rate, ~0.3 before the drift, passes the rule's 0.45 after it
           "DRIFTLINE_CONCEPT_RULES": f"{MODEL}=error_rate > 0.45 over 1000",
           "DRIFTLINE_CONCEPT_MIN_LABELLED": "500", "DRIFTLINE_CONCEPT_EVAL_EVERY": "250",
           "DRIFTLINE_LABEL_TTL_SECONDS": "60",
           "DRIFTLINE_SHADOW_MIN_PAIRS": "500", "DRIFTLINE_SHADOW_PANE_PAIRS": "250"}
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "driftline.streams", "worker"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    processes.append(worker)

    # -- prometheus with the chart's rules (test copy) ----------------------------------
    rules = write_test_rules(tmp_path / "rules")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [{"job_name": "driftline", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    prom_log = tmp_path / "prometheus.log"
    with prom_log.open("wb") as log:
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    processes.append(prometheus)
    prom = Prom(prom_port)

    def alive() -> str | None:
        if worker.poll() is not None:
            return f"worker exited {worker.returncode}:\n{_tail(worker_log)}"
        if prometheus.poll() is not None:
            return f"prometheus exited {prometheus.returncode}:\n{_tail(prom_log)}"
        return None

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as r:
                ok = r.status == 200
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as r:
                return ok and r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ready, 60, "the worker's /healthz and Prometheus' /-/ready", alive)
    # the rule files as loaded: every rule of the chart, none failing to parse
    loaded = {r["name"] for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]}
    assert loaded == {name for name, _ in rule_exprs()}

    stream = Stream(kafka_client_config, topic, f"{prefix}.labels")
    try:
        # one message that is not JSON: a dead letter with reason invalid_json
        assert stream.producer.send_raw(MODEL, b"{not json")

        # the model is evaluated (its alert counters exist at 0) before anything drifts
        wait_until(lambda: prom.value(
            f'driftline_alerts_total{{model="{MODEL}", kind="data", state="firing"}}') == 0.0,
            60, "the model's first evaluations in Prometheus", alive)
        stream.drift.set()

        def firing() -> set[str]:
            alerts = prom.get("/api/v1/alerts")["data"]["alerts"]
            return {a["labels"]["kind"] for a in alerts
                    if a["labels"]["alertname"] == "DriftlineDriftFiring"
                    and a["labels"]["model"] == MODEL and a["state"] == "firing"}

        try:
            wait_until(lambda: firing() >= KINDS, 60,
                       f"DriftlineDriftFiring firing for the model's {sorted(KINDS)}", alive)
        except AssertionError as exc:
            states = [(r["metric"], r["value"][1]) for r in prom.query("driftline_drift_state")]
            raise AssertionError(f"{exc}; firing: {sorted(firing())}; drift_state: {states}; "
                                 f"worker log:\n{_tail(worker_log)}") from None

        # -- series of the model --------------------------------------------------------
        assert prom.value(f'up{{job="driftline", instance="127.0.0.1:{metrics_port}"}}') == 1.0
        assert (prom.value(f'driftline_worker_events_total{{model="{MODEL}"}}') or 0) >= 1000
        score = prom.value(f'driftline_drift_score{{model="{MODEL}", feature="{DRIFTED}", '
                           f'statistic="chi2"}}')
        threshold = prom.value(f'driftline_drift_threshold{{model="{MODEL}", '
                               f'feature="{DRIFTED}", statistic="chi2"}}')
        assert score is not None and threshold is not None and score > threshold > 0
        for stat in MV_STATISTICS:
            for family in ("driftline_drift_score", "driftline_drift_threshold"):
                v = prom.value(f'{family}{{model="{MODEL}", feature="__multivariate__", '
                               f'statistic="{stat}"}}')
                assert v is not None and math.isfinite(v), (family, stat)
        assert prom.value('driftline_worker_deadletter_total{reason="invalid_json"}') == 1.0

        # -- segments, labels, quality, confidence, shadow, event time ------------------
        segments = {r["metric"]["segment"]: float(r["value"][1]) for r in prom.query(
            f'driftline_segment_events_total{{model="{MODEL}"}}')}
        assert set(segments) == {f"region={r}" for r in REGIONS}, segments
        assert min(segments.values()) > 0
        assert {r["metric"]["segment"] for r in prom.query(
            f'driftline_segment_drift_score{{model="{MODEL}", feature="{DRIFTED}"}}')} == set(
            segments)
        assert (prom.value(f'driftline_labels_joined_total{{model="{MODEL}"}}') or 0) >= 500
        assert (prom.value(f'driftline_labels_unmatched_total{{model="{MODEL}", '
                           f'reason="unmatched"}}') or 0) >= 1
        error_rate = prom.value(f'driftline_model_quality{{model="{MODEL}", '
                                f'metric="error_rate"}}')
        assert error_rate is not None and error_rate > 0.45, error_rate
        missing = prom.value(f'driftline_quality_metric{{model="{MODEL}", feature="{SPARSE}", '
                             f'metric="missing_rate"}}')
        assert missing is not None and 0.2 < missing < 0.6, missing
        share = prom.value(f'driftline_prediction_high_confidence_ratio{{model="{MODEL}"}}')
        assert share is not None and 0 <= share <= 1
        agreement = prom.value(f'driftline_shadow_agreement_ratio{{model="{MODEL}", '
                               f'candidate="{CANDIDATE}"}}')
        assert agreement is not None and agreement < 0.95, agreement
        # TIME_MODEL builds its reference from its first 1,000 events (~90 rounds of the
        # stream), which on a loaded machine can take longer than MODEL's drift to fire
        wait_until(lambda: (prom.value(
            f'driftline_worker_late_events_total{{model="{TIME_MODEL}"}}') or 0) >= 1,
            90, f"a late event of {TIME_MODEL} counted", alive)
        assert prom.value(f'driftline_worker_watermark_seconds{{model="{TIME_MODEL}"}}')

        # -- every expression: no error; non-empty unless listed ------------------------
        exprs, variables = dashboard_exprs()
        checks = [(f"rule {name}", name, expr) for name, expr in rule_exprs()]
        checks += [(f"panel {title}", None, substitute(expr)) for title, expr in exprs]
        known = {name for _, name, _ in checks if name}
        assert set(FALSE_WHEN_HEALTHY) <= known
        pending: dict[str, str] = {}
        for what, name, expr in checks:
            prom.query(expr)  # parses and evaluates
            reads = metric_names(expr)
            if name in FALSE_WHEN_HEALTHY:
                assert prom.query(expr) == [], f"{what} holds on a healthy worker: {expr}"
            else:
                pending[f"{what}: {expr}"] = expr
            for metric in reads:  # what the expression reads exists
                pending[f"series of {metric} ({what})"] = f'count({{__name__="{metric}"}})'

        def all_non_empty() -> bool:
            for key, expr in list(pending.items()):
                if prom.query(expr):
                    del pending[key]
            return not pending

        try:  # rates, consumer lag (librdkafka statistics every 5 s) need a few scrapes
            wait_until(all_non_empty, 30, "non-empty results", alive)
        except AssertionError:
            raise AssertionError("empty results:\n" + "\n".join(sorted(pending))) from None

        for name, match, label in variables:
            values = set(prom.get(f"/api/v1/label/{label}/values",
                                  **{"match[]": substitute(match)})["data"])
            if name == "model":
                assert MODEL in values
            elif name == "statistic":
                assert {"chi2", "psi", "js"} | MV_STATISTICS <= values, values
            else:
                assert name == "segment", name
                assert values == {f"region={r}" for r in REGIONS}, values

        # the drill-down ranks the multivariate statistics beside the drifted column
        ranked = next(substitute(e) for t, e in exprs if t.startswith("Score / calibrated"))
        rows = {(r["metric"]["feature"], r["metric"]["statistic"]) for r in prom.query(ranked)}
        assert {("__multivariate__", s) for s in MV_STATISTICS} | {(DRIFTED, "chi2")} <= rows

        # the recording rules produced values for the model; no rule failed
        for group in prom.get("/api/v1/rules")["data"]["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
        for record in ("model:driftline_worker_events:rate5m",
                       "model:driftline_serving_requests:rate5m",
                       "model:driftline_serving_latency_seconds:p99_5m",
                       "model:driftline_serving_errors:ratio_rate5m"):
            v = prom.value(f'{record}{{model="{MODEL}"}}')
            assert v is not None and math.isfinite(v) and v > 0, (record, v)
    finally:
        stream.stop()
    assert worker.poll() is None, _tail(worker_log)

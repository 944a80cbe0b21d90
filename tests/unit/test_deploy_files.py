"""Deployment files: rules, dashboard, docker-compose, Dockerfile and the Helm chart.

* the chart's rule files pass ``promtool check rules`` and the ``promtool test rules``
  scenarios in tests/promtool/driftline-alerts.test.yaml (each alert fires at its minute
  and stays silent otherwise) -- skipped when promtool is not on PATH;
* every metric the rules read is a contract metric (histograms may add _bucket/_sum/_count)
  or a series recorded by the chart's recording rules; every metric the dashboard reads is
  one of those or a family a worker's WorkerMetrics exports (segments, labels, quality,
  confidence, shadow, event time);
* every image is pinned; the dashboard is valid JSON with the model and segment variables;
* values.yaml matches values.schema.json, which rejects more workers than partitions;
* the chart renders (``helm`` on PATH, else the ``helm_python`` module) with probes,
  credentials only from a Secret, KEDA or HPA, and fails on too many replicas.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from driftline.streams.settings import unknown_variables

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "driftline"
RULES = sorted((CHART / "files" / "rules").glob("*.yaml"))
DASHBOARD = CHART / "files" / "dashboards" / "driftline-overview.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (apt-get install prometheus): skipping promtool rule checks",
)

# The contract's metric names (docs: "Metrics" in the working contract).
CONTRACT_METRICS = {
    "driftline_worker_events_total",
    "driftline_worker_bytes_total",
    "driftline_worker_deadletter_total",
    "driftline_worker_batch_size_events",
    "driftline_worker_batch_duration_seconds",
    "driftline_worker_models_tracked",
    "driftline_worker_event_time_lag_seconds",
    "driftline_worker_consumer_lag_messages",
    "driftline_worker_last_evaluation_timestamp_seconds",
    "driftline_worker_references_built_total",
    "driftline_drift_score",
    "driftline_drift_threshold",
    "driftline_drift_state",
    "driftline_drift_insufficient_data",
    "driftline_alerts_total",
    "driftline_serving_latency_seconds",
    "driftline_serving_requests_total",
    "driftline_change_events_total",
    "driftline_change_last_timestamp_seconds",
}
CONTRACT_HISTOGRAMS = {
    "driftline_worker_batch_size_events",
    "driftline_worker_batch_duration_seconds",
    "driftline_serving_latency_seconds",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """driftline series names in a PromQL expression (string literals removed)."""
    return {tok for tok in _IDENT.findall(_STRING.sub('""', expr)) if "driftline" in tok}


def _load_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules.extend(group["rules"])
    return rules


def _recorded() -> set[str]:
    return {r["record"] for r in _load_rules() if "record" in r}


def _worker_families() -> tuple[set[str], set[str]]:
    """(sample names without histogram suffixes, histogram names) WorkerMetrics exports."""
    from prometheus_client import CollectorRegistry

    from driftline.streams.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    names, histograms = set(), set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            histograms.add(family.name)
    return names, histograms


def _unknown(names: set[str], extra: set[str] = frozenset(),  # type: ignore[assignment]
             extra_histograms: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    recorded = _recorded()
    allowed = CONTRACT_METRICS | extra
    histograms = CONTRACT_HISTOGRAMS | extra_histograms
    bad = set()
    for name in names:
        if ":" in name:
            if name not in recorded:
                bad.add(name)
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in allowed or (base != name and base in histograms):
            continue
        bad.add(name)
    return bad


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dash["panels"]:
        exprs.extend(t["expr"] for t in panel.get("targets", []))
    exprs.extend(a["expr"] for a in dash["annotations"]["list"] if "expr" in a)
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


# ----------------------------------------------------------------- rules


def test_rule_files_define_the_drift_alerts_and_recordings() -> None:
    rules = _load_rules()
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert set(alerts) == {"DriftlineDriftFiring", "DriftlineWorkerNotEvaluating",
                           "DriftlineDeadLetterRate", "DriftlineConsumerLagGrowing",
                           "DriftlineWorkerDown"}
    assert alerts["DriftlineDriftFiring"]["for"] == "10m"
    assert "> 900" in alerts["DriftlineWorkerNotEvaluating"]["expr"]
    assert "deriv(driftline_worker_consumer_lag_messages" in (
        alerts["DriftlineConsumerLagGrowing"]["expr"])
    assert alerts["DriftlineConsumerLagGrowing"]["for"] == "15m"
    assert 'up{job="driftline"} == 0' in alerts["DriftlineWorkerDown"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(alert["annotations"])
    recorded = _recorded()
    assert {"model:driftline_serving_requests:rate5m",
            "model:driftline_serving_latency_seconds:p99_5m",
            "model:driftline_serving_errors:ratio_rate5m"} <= recorded
    errors = next(r for r in rules if r.get("record") == "model:driftline_serving_errors:ratio_rate5m")
    assert 'outcome="error"' in errors["expr"]


def test_rules_read_only_contract_metrics() -> None:
    names: set[str] = set()
    for rule in _load_rules():
        names |= metric_names(rule["expr"])
    assert names, "no driftline metric found in the rules"
    assert _unknown(names) == set()


def test_metric_name_parser() -> None:
    expr = ('sum by (le) (rate(driftline_serving_latency_seconds_bucket{job="driftline_x"}[5m]))'
            " / model:driftline_serving_requests:rate5m")
    assert metric_names(expr) == {"driftline_serving_latency_seconds_bucket",
                                  "model:driftline_serving_requests:rate5m"}
    assert _unknown({"driftline_serving_latency_seconds_bucket"}) == set()
    assert _unknown({"driftline_drift_state_bucket", "driftline_nope",
                     "model:driftline_nope:rate5m"}) == {
        "driftline_drift_state_bucket", "driftline_nope", "model:driftline_nope:rate5m"}


def test_contract_metrics_are_exported_by_the_worker() -> None:
    from prometheus_client import CollectorRegistry

    from driftline.streams.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry)
    exported = set()
    for family in registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert CONTRACT_METRICS <= exported


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = subprocess.run([PROMTOOL, "check", "rules", *map(str, RULES)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_alert_unit_tests() -> None:
    test_file = ROOT / "tests" / "promtool" / "driftline-alerts.test.yaml"
    proc = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = test_file.read_text(encoding="utf-8")
    for alert in ("DriftlineDriftFiring", "DriftlineWorkerNotEvaluating",
                  "DriftlineDeadLetterRate", "DriftlineConsumerLagGrowing",
                  "DriftlineWorkerDown"):
        # each alert has a firing expectation and a silent one
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts: \[\]", text), alert
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n", text), alert


@needs_promtool
def test_promtool_check_config_of_the_compose_prometheus() -> None:
    proc = subprocess.run([PROMTOOL, "check", "config", "--syntax-only",
                           str(ROOT / "deploy" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------- dashboard


def test_dashboard_is_valid_and_has_model_and_segment_variables() -> None:
    dash = _dashboard()
    assert dash["uid"] == "driftline-overview"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert {"datasource", "model", "segment"} <= set(variables)
    assert variables["model"]["multi"] and variables["model"]["includeAll"]
    assert variables["segment"]["query"]["query"].startswith(
        "label_values(driftline_segment_events_total")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dash["panels"]}
    for row in ("Fleet overview", "Model drill-down: $model", "Golden signals: $model",
                "driftline health"):
        assert row in titles
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, parses (promtool check rules)."""
    subst = {"$__rate_interval": "1m", "$model": "model-3", "$segment": "region=eu",
             "$statistic": "psi"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs(_dashboard())):
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        for var, value in subst.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query:{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                    encoding="utf-8")
    proc = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_drifting_features_panel_counts_data_features_once(tmp_path: Path) -> None:
    """The fleet panel counts a model's input features with a firing data drift alert:
    not its prediction, quality, concept or shadow alerts, and a feature reported by two
    workers (a partition moving) once."""
    panel = next(p for p in _dashboard()["panels"] if p["title"] == "Drifting features by model")
    expr = panel["targets"][0]["expr"]
    series = [("w1", "m1", "data", "f1", 1), ("w2", "m1", "data", "f1", 1),
              ("w1", "m1", "data", "f2", 0), ("w1", "m1", "quality", "f3", 1),
              ("w1", "m1", "prediction", "prediction", 1), ("w1", "m1", "concept", "fpr", 1),
              ("w1", "m2", "data", "f1", 1), ("w1", "m2", "data", "f4", 1)]
    test = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": f'driftline_drift_state{{instance="{w}:9464",model="{m}",'
                                    f'kind="{k}",feature="{f}"}}', "values": f"{v}x5"}
                         for w, m, k, f, v in series],
        "promql_expr_test": [{"expr": expr, "eval_time": "2m", "exp_samples": [
            {"labels": '{model="m1"}', "value": 1}, {"labels": '{model="m2"}', "value": 2}]}]}]}
    path = tmp_path / "panel.test.yaml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    proc = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("amtool") is None,
                    reason="amtool not on PATH (apt-get install prometheus-alertmanager)")
def test_alertmanager_config_is_valid() -> None:
    proc = subprocess.run(["amtool", "check-config", str(ROOT / "deploy" / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_inhibitions_are_scoped() -> None:
    """An inhibiting alert mutes only alerts that share its labels (``equal``): one
    down worker or one model's alert never silences the alerts of every model."""
    config = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text(encoding="utf-8"))
    rules = config.get("inhibit_rules", [])
    assert rules
    for rule in rules:
        assert rule.get("equal"), rule


def test_dashboard_reads_only_metrics_the_worker_exports() -> None:
    names: set[str] = set()
    for expr in _dashboard_exprs(_dashboard()):
        names |= metric_names(expr)
    exported, histograms = _worker_families()
    assert _unknown(names, exported, histograms) == set()
    assert _unknown({"driftline_prediction_score_bucket", "driftline_segment_drift_state"},
                    exported, histograms) == {"driftline_prediction_score_bucket",
                                              "driftline_segment_drift_state"}
    # the drill-down ranks features by driftline_drift_score; golden signals and health
    for needed in ("driftline_drift_score", "driftline_drift_state",
                   "model:driftline_serving_latency_seconds:p99_5m",
                   "model:driftline_serving_errors:ratio_rate5m",
                   "driftline_worker_consumer_lag_messages",
                   "driftline_worker_batch_duration_seconds_bucket",
                   # the drill-down's segment, prediction, label, quality, shadow and
                   # event-time panels
                   "driftline_segment_drift_score", "driftline_segment_events_total",
                   "driftline_prediction_high_confidence_ratio", "driftline_model_quality",
                   "driftline_label_coverage_ratio", "driftline_label_delay_seconds_bucket",
                   "driftline_labels_unmatched_total", "driftline_labels_joined_total",
                   "driftline_quality_metric", "driftline_shadow_agreement_ratio",
                   "driftline_shadow_pairs_total", "driftline_shadow_score_diff_bucket",
                   "driftline_worker_late_events_total", "driftline_worker_watermark_seconds"):
        assert needed in names, needed


# ----------------------------------------------------------------- compose, Dockerfile

_PINNED = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")


def _is_pinned(image: str) -> bool:
    m = _PINNED.match(image)
    if not m or not (m.group(1) or m.group(2)):
        return False
    return m.group(1) != ":latest"


def test_pin_checker() -> None:
    assert _is_pinned("apache/kafka:3.9.1")
    assert _is_pinned("prom/prometheus@sha256:" + "a" * 64)
    assert not _is_pinned("grafana/grafana")
    assert not _is_pinned("grafana/grafana:latest")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_every_compose_image_is_pinned() -> None:
    services = _compose()["services"]
    assert {"kafka", "kafka-init", "worker", "producer", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc, name
        assert _is_pinned(svc["image"]), f"{name}: {svc['image']} is not pinned"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")


def test_compose_kafka_topics_workers_and_monitoring() -> None:
    services = _compose()["services"]
    env = services["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    init = "\n".join(services["kafka-init"]["command"])
    # every topic the worker would create, with the worker's partition count and configs
    # (a compose-made topic that differs is only logged by the worker, so check it here)
    from driftline.streams.settings import Settings
    from driftline.streams.worker import topic_specs

    settings = Settings(partitions=8)
    created = {m.group(1): m.group(2) for m in re.finditer(r"^\s*create (\S+) +(.*)$", init,
                                                           flags=re.M)}
    specs = topic_specs(settings)
    assert set(created) == {s.name for s in specs}
    for spec in specs:
        args = created[spec.name].split()
        parts = args[args.index("--partitions") + 1]
        want = '"$$PARTITIONS"' if spec.partitions == settings.partitions else str(spec.partitions)
        assert parts == want, (spec.name, parts)
        configs = {args[i + 1] for i, a in enumerate(args) if a == "--config"}
        expected = {f"{k}={v}" for k, v in spec.config.items()}
        if spec.compact:
            expected.add("cleanup.policy=compact")
        assert configs == expected, (spec.name, configs)
    assert services["kafka-init"]["environment"]["PARTITIONS"] == "${DRIFTLINE_PARTITIONS:-8}"
    worker = services["worker"]
    assert worker["command"] == ["worker", "--bootstrap", "kafka:9092", "--metrics-port", "9464"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["deploy"]["replicas"] == 2
    producer = services["producer"]["command"]
    assert producer[:1] == ["produce"] and "--drift-model" in producer
    assert "./helm/driftline/files/rules:/etc/prometheus/rules/driftline:ro" in (
        services["prometheus"]["volumes"])
    assert "./helm/driftline/files/dashboards:/var/lib/grafana/dashboards/driftline:ro" in (
        services["grafana"]["volumes"])
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "driftline")
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    assert job["dns_sd_configs"][0]["port"] == 9464
    assert "/etc/prometheus/rules/driftline/*.yaml" in prom["rule_files"]


def test_dockerfile_is_pinned_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms and all(re.match(r"python:3\.11\.\d+-slim", f) for f in froms)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("root", "0"))
    health = re.search(r"^HEALTHCHECK (?:.*\\\n)*.*", text, flags=re.M)
    assert health and "127.0.0.1" in health.group(0) and "/healthz" in health.group(0)
    assert "9464" in health.group(0)
    assert re.search(r'^ENTRYPOINT \["driftline"\]', text, flags=re.M)
    assert "pip install --no-cache-dir ." in text


def test_the_image_gets_every_package_folder_the_build_needs() -> None:
    """Every folder pyproject maps a package to is copied by the Dockerfile and let through
    by .dockerignore (a missing one fails ``pip install .``: "package directory ... does
    not exist")."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    roots = {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    copied = set(re.findall(r"^COPY\s+(\S+?)/?\s+\S+$", (ROOT / "Dockerfile").read_text(
        encoding="utf-8"), flags=re.M))
    allowed = {line[1:].strip("/") for line in (ROOT / ".dockerignore").read_text(
        encoding="utf-8").splitlines() if line.startswith("!")}
    assert roots <= copied, roots - copied
    assert roots <= allowed, roots - allowed


# ----------------------------------------------------------------- chart values


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def _schema_errors(values: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    return [e.message for e in validator.iter_errors(values)]


def test_values_match_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())
    assert _schema_errors(_values()) == []


def test_schema_rejects_more_workers_than_partitions() -> None:
    v = _values()
    too_many = copy.deepcopy(v)
    too_many["replicaCount"] = v["kafka"]["partitions"] + 1
    assert _schema_errors(too_many)
    autoscaled = copy.deepcopy(v)
    autoscaled["autoscaling"].update(enabled=True, maxReplicas=v["kafka"]["partitions"] + 1)
    assert _schema_errors(autoscaled)
    more_partitions = copy.deepcopy(autoscaled)
    more_partitions["kafka"]["partitions"] = 16
    assert _schema_errors(more_partitions) == []
    latest = copy.deepcopy(v)
    latest["image"]["tag"] = "latest"
    assert _schema_errors(latest)


def test_chart_templates_include_the_shared_files() -> None:
    rule = (CHART / "templates" / "prometheusrule.yaml").read_text(encoding="utf-8")
    dash = (CHART / "templates" / "dashboard-configmap.yaml").read_text(encoding="utf-8")
    for name in ("files/rules/driftline-alerts.yaml", "files/rules/driftline-recording.yaml"):
        assert f'.Files.Get "{name}"' in rule
        assert (CHART / name).is_file()
    assert '.Files.Get "files/dashboards/driftline-overview.json"' in dash
    assert _values()["dashboards"]["labels"] == {"grafana_dashboard": "1"}


# ----------------------------------------------------------------- chart rendering


def _renderer() -> str | None:
    if shutil.which("helm"):
        return "helm"
    try:
        import helm_python  # noqa: F401
    except ImportError:
        return None
    return "helm_python"


RENDERER = _renderer()
needs_helm = pytest.mark.skipif(
    RENDERER is None,
    reason="helm not installed (nor the helm_python module): skipping chart rendering tests",
)


class RenderError(Exception):
    pass


def render(values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """Rendered manifests of the chart (release demo, namespace mlops)."""
    if RENDERER == "helm":
        vf = tmp_path / "values.json"
        vf.write_text(json.dumps(values), encoding="utf-8")
        proc = subprocess.run(["helm", "template", "demo", str(CHART), "-n", "mlops",
                               "-f", str(vf)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RenderError(proc.stderr)
        text = proc.stdout
    else:
        import helm_python

        try:
            with helm_python.Chart.load(str(CHART)) as chart:
                out = chart.render(values, name="demo", namespace="mlops")
        except helm_python.HelmError as exc:
            raise RenderError(str(exc)) from exc
        text = "\n---\n".join(v for k, v in out.items() if not k.endswith("NOTES.txt"))
    return [d for d in yaml.safe_load_all(text) if d]


def _kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


@needs_helm
def test_chart_default_render(tmp_path: Path) -> None:
    docs = _kinds(render({}, tmp_path))
    assert {"Deployment", "Service", "ConfigMap", "ServiceMonitor", "PrometheusRule",
            "PodDisruptionBudget", "ServiceAccount"} <= set(docs)
    assert "ScaledObject" not in docs and "HorizontalPodAutoscaler" not in docs
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"]["path"] == "/healthz"
    assert worker["resources"]["requests"]
    assert worker["envFrom"][0]["configMapRef"]["name"] == "demo-driftline"
    rule = docs["PrometheusRule"]["spec"]["groups"]
    assert {g["name"] for g in rule} == {"driftline.alerts", "driftline.recording"}
    assert docs["ServiceMonitor"]["spec"]["jobLabel"] == "app.kubernetes.io/part-of"


@needs_helm
def test_chart_keeps_reference_records_on_the_data_volume(tmp_path: Path) -> None:
    def rendered(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        docs = render(values, tmp_path)
        config = next(d for d in docs if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"] == "demo-driftline")
        return config["data"], _kinds(docs)["Deployment"]["spec"]["template"]["spec"]

    data, pod = rendered({})
    assert data["DRIFTLINE_DATA_DIR"] == "/var/lib/driftline"
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/driftline"]]
    data, _ = rendered({"config": {"data_dir": "/scratch"}})
    assert data["DRIFTLINE_DATA_DIR"] == "/scratch"


@needs_helm
def test_chart_dashboard_configmap(tmp_path: Path) -> None:
    cms = [d for d in render({}, tmp_path) if d["kind"] == "ConfigMap"
           and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    (cm,) = cms
    assert json.loads(cm["data"]["driftline-overview.json"]) == _dashboard()


@needs_helm
def test_chart_sasl_credentials_only_from_the_secret(tmp_path: Path) -> None:
    values = {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512",
                        "tls": {"caCert": True}},
              "secret": {"create": True, "saslUsername": "svc-driftline",
                         "saslPassword": "s3cr3t-pw"},
              "autoscaling": {"enabled": True, "kind": "keda"}}
    docs = render(values, tmp_path)
    kinds = _kinds(docs)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "demo-driftline")
    assert "s3cr3t-pw" not in json.dumps(config) and "svc-driftline" not in json.dumps(config)
    assert config["data"]["DRIFTLINE_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["data"]["DRIFTLINE_SSL_CAFILE"].endswith("/ca.crt")
    env = {e["name"]: e for e in kinds["Deployment"]["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    for name in ("DRIFTLINE_SASL_USERNAME", "DRIFTLINE_SASL_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "demo-driftline"
        assert "value" not in env[name]
    assert kinds["Secret"]["data"]["sasl-password"]
    scaled = kinds["ScaledObject"]["spec"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "driftline"
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert scaled["maxReplicaCount"] <= 8
    params = {r["parameter"] for r in kinds["TriggerAuthentication"]["spec"]["secretTargetRef"]}
    assert params == {"username", "password", "ca"}
    assert "HorizontalPodAutoscaler" not in kinds


@needs_helm
def test_chart_hpa_alternative(tmp_path: Path) -> None:
    kinds = _kinds(render({"autoscaling": {"enabled": True, "kind": "hpa", "maxReplicas": 4}},
                          tmp_path))
    assert "ScaledObject" not in kinds
    assert kinds["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 4
    assert "replicas" not in kinds["Deployment"]["spec"]


@needs_helm
@pytest.mark.parametrize(
    ("values", "message"),
    [
        # beyond what the schema covers (1..64 partitions): the template's own check
        ({"kafka": {"partitions": 100}, "autoscaling": {"enabled": True, "maxReplicas": 120}},
         "autoscaling.maxReplicas (120) exceeds kafka.partitions (100)"),
        ({"kafka": {"partitions": 100}, "replicaCount": 101},
         "replicaCount (101) exceeds kafka.partitions (100)"),
        ({"autoscaling": {"enabled": True, "maxReplicas": 9}}, "maxReplicas"),
        ({"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"}},
         "come only from a Secret"),
        ({"config": {"sasl_password": "x"}}, "looks like a credential"),
    ],
)
def test_chart_refuses_bad_values(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values, tmp_path)


@needs_helm
def test_rendered_manifests_pass_kubernetes_validate(tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate not installed: skipping schema check")
    values = {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN",
                        "tls": {"caCert": True, "clientCert": True}},
              "secret": {"existingSecret": "kafka-credentials"},
              "autoscaling": {"enabled": True, "kind": "hpa"}}
    checked = 0
    for doc in render(values, tmp_path):
        if "." in doc["apiVersion"].split("/")[0]:  # CRDs: monitoring.coreos.com, keda.sh
            continue
        kv.validate(doc, "1.30.0", strict=True)
        checked += 1
    assert checked >= 6


def test_compose_sets_only_real_settings() -> None:
    compose = _compose()
    names = {str(k).split("=")[0] for svc in compose["services"].values()
             for k in (svc.get("environment") or {})}  # a mapping, or a list of K=V
    names = {n for n in names if n.startswith("DRIFTLINE_")}
    assert names >= {"DRIFTLINE_BOOTSTRAP_SERVERS", "DRIFTLINE_PARTITIONS"}
    assert not unknown_variables(dict.fromkeys(names, ""))


@needs_helm
def test_chart_sets_only_real_settings(tmp_path: Path) -> None:
    values = {"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512",
                        "tls": {"caCert": True}},
              "secret": {"create": True, "saslUsername": "u", "saslPassword": "p"},
              "config": {"data_dir": "/scratch"}}
    docs = render(values, tmp_path)
    config = next(d for d in docs if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "demo-driftline")
    env = _kinds(docs)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    names = set(config["data"]) | {e["name"] for e in env}
    names = {n for n in names if n.startswith("DRIFTLINE_")}
    assert {"DRIFTLINE_BOOTSTRAP_SERVERS", "DRIFTLINE_SASL_PASSWORD"} <= names
    assert not unknown_variables(dict.fromkeys(names, ""))


def test_chart_config_takes_only_real_settings() -> None:
    """``config:`` keys are setting names: a typo (``pane_sise``) is a schema error, not
    a variable every worker ignores."""
    from driftline.streams.settings import setting_variables

    names = _schema()["properties"]["config"]["propertyNames"]["enum"]
    assert sorted(names) == sorted(v.removeprefix("DRIFTLINE_").lower()
                                   for v in setting_variables())
    v = _values()
    v["config"] = {"pane_sise": 2000}
    assert _schema_errors(v)
    v["config"] = {"pane_size": 2000, "segments": False}
    assert _schema_errors(v) == []

"""SLO spec -> Prometheus rules: validation, rule structure, and promtool checks.

The promtool parts run when ``promtool`` is on PATH (Debian package ``prometheus``):
``promtool check rules`` on the rendered example, and ``promtool test rules`` on the
scenarios in tests/promtool/slo-*.test.yaml (burn-rate alerts fire at the computed minute
and stay silent below budget).
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from driftline.streams import slo

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "slo-example.yaml"
PROMTOOL_DIR = ROOT / "tests" / "promtool"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (apt-get install prometheus): skipping promtool rule checks",
)


def _spec(**slo_fields: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "s", "model": "m", "objective": 99.9,
                               "sli": {"type": "availability"}}
    base.update(slo_fields)
    return {"slos": [base]}


def _rules_by_name(rendered: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for group in rendered["groups"]:
        for rule in group["rules"]:
            out.setdefault(rule.get("record") or rule["alert"], []).append(rule)
    return out


# ----------------------------------------------------------------- spec validation


def test_example_spec_loads() -> None:
    spec = slo.load_spec(EXAMPLE)
    types = {s.sli.type for s in spec.slos}
    assert types == {"availability", "latency", "freshness", "label_coverage"}
    assert spec.slos[0].error_budget == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"objective": 100}, "slos.0.objective"),
        ({"objective": 0}, "slos.0.objective"),
        ({"name": "bad name"}, "slos.0.name"),
        ({"sli": {"type": "throughput"}}, "slos.0.sli"),
        ({"sli": {"type": "latency"}}, "threshold_ms"),
        ({"sli": {"type": "latency", "threshold_ms": 60}}, "not a bucket bound"),
        ({"sli": {"type": "freshness", "max_age_seconds": -1}}, "max_age_seconds"),
        ({"sli": {"type": "label_coverage", "metric": "not a metric"}}, "Prometheus metric"),
        ({"labels": {"severity": "x"}}, "set by driftline"),
        ({"labels": {"bad-label": "x"}}, "not a valid label name"),
        ({"period": "30 days"}, "period"),
        ({"objectiv": 99}, "objectiv"),
    ],
)
def test_invalid_specs_are_rejected_with_the_field(fields: dict, message: str) -> None:
    with pytest.raises(slo.SloSpecError) as exc:
        slo.parse_spec(_spec(**fields), source="spec.yaml")
    assert "spec.yaml" in str(exc.value)
    assert message in str(exc.value)


def test_duplicate_names_and_empty_specs_are_rejected() -> None:
    one = _spec()["slos"][0]  # type: ignore[index]
    with pytest.raises(slo.SloSpecError, match="used twice"):
        slo.parse_spec({"slos": [one, one]})
    with pytest.raises(slo.SloSpecError, match="slos"):
        slo.parse_spec({"slos": []})
    with pytest.raises(slo.SloSpecError, match="mapping"):
        slo.parse_spec(["not", "a", "mapping"])


def test_load_spec_reports_missing_files_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(slo.SloSpecError, match="cannot read"):
        slo.load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("slos: [\n", encoding="utf-8")
    with pytest.raises(slo.SloSpecError, match="not valid YAML"):
        slo.load_spec(bad)


def test_latency_buckets_match_the_worker_histogram() -> None:
    from driftline.streams import metrics

    worker_ms = tuple(round(b * 1000, 9) for b in metrics._LATENCY_BUCKETS)
    assert worker_ms == tuple(float(b) for b in slo.DEFAULT_LATENCY_BUCKETS_MS)


# ----------------------------------------------------------------- rendering


def test_rendered_rules_have_every_window_and_the_budget_series() -> None:
    spec = slo.parse_spec(_spec(name="checkout", model="model-3", objective=99.9,
                                labels={"team": "fraud"}))
    rendered = slo.render_rules(spec)
    assert [g["name"] for g in rendered["groups"]] == [
        "driftline-slo-checkout-sli", "driftline-slo-checkout-meta",
        "driftline-slo-checkout-alerts"]
    rules = _rules_by_name(rendered)
    for window in slo.WINDOWS:
        (rule,) = rules[f"slo:sli_error:ratio_rate{window}"]
        assert f"[{window}]" in rule["expr"]
        assert 'model="model-3"' in rule["expr"]
        assert rule["labels"] == {"slo": "checkout", "model": "model-3", "sli": "availability"}
    for name in ("slo:objective:ratio", "slo:error_budget:ratio", "slo:current_burn_rate:ratio",
                 "slo:period_error_ratio:ratio", "slo:error_budget_remaining:ratio"):
        assert name in rules
    assert rules["slo:objective:ratio"][0]["expr"] == "vector(0.999)"
    assert rules["slo:error_budget:ratio"][0]["expr"] == "vector(0.001)"
    assert "[30d]" in rules["slo:period_error_ratio:ratio"][0]["expr"]


def test_burn_rate_alerts_follow_the_sre_workbook() -> None:
    spec = slo.parse_spec(_spec(name="a", objective=99.9, labels={"team": "fraud"}))
    rules = _rules_by_name(slo.render_rules(spec))
    (page,) = rules["DriftlineSLOBurnRatePage"]
    (ticket,) = rules["DriftlineSLOBurnRateTicket"]
    # threshold = factor x (1 - objective): 14.4 x 0.001, 6 x 0.001, 3 x 0.001, 1 x 0.001
    for expr, pairs in ((page["expr"], [("1h", "5m", "0.0144"), ("6h", "30m", "0.006")]),
                        (ticket["expr"], [("1d", "2h", "0.003"), ("3d", "6h", "0.001")])):
        for long_w, short_w, thr in pairs:
            assert f'slo:sli_error:ratio_rate{long_w}{{slo="a"}} > {thr}' in expr
            assert f'slo:sli_error:ratio_rate{short_w}{{slo="a"}} > {thr}' in expr
        assert expr.count(" and\n") == 2 and expr.count("\nor\n") == 1
    assert page["labels"]["severity"] == "critical"
    assert ticket["labels"]["severity"] == "warning"
    assert page["labels"]["team"] == "fraud"
    assert {"summary", "description"} <= set(page["annotations"])


def test_each_sli_type_reads_the_contract_metrics() -> None:
    spec = slo.load_spec(EXAMPLE)
    exprs = {s.sli.type: slo.sli_error_ratio(s, "1h") for s in spec.slos}
    assert 'driftline_serving_requests_total{model="model-3",outcome="error"}' in (
        exprs["availability"])
    assert 'le=~"0\\\\.05"' in exprs["latency"]
    assert "driftline_serving_latency_seconds_count" in exprs["latency"]
    assert "driftline_worker_last_evaluation_timestamp_seconds" in exprs["freshness"]
    assert "> bool 300" in exprs["freshness"] and "[1h:1m]" in exprs["freshness"]
    assert "offset 3600s" in exprs["label_coverage"]
    assert "driftline_worker_events_total" in exprs["label_coverage"]


def test_latency_le_matches_both_spellings_of_whole_seconds() -> None:
    spec = slo.parse_spec(_spec(sli={"type": "latency", "threshold_ms": 1000}))
    expr = slo.sli_error_ratio(spec.slos[0], "5m")
    assert 'le=~"1|1\\\\.0"' in expr


def test_model_names_are_escaped_in_promql() -> None:
    spec = slo.parse_spec(_spec(model='we"ird\\model'))
    expr = slo.sli_error_ratio(spec.slos[0], "5m")
    assert 'model="we\\"ird\\\\model"' in expr


def test_render_yaml_round_trips() -> None:
    spec = slo.load_spec(EXAMPLE)
    text = slo.render_yaml(spec)
    assert text.startswith("# Generated by `driftline slo render`")
    assert yaml.safe_load(text) == slo.render_rules(spec)


# ----------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_check_rules_accepts_the_rendered_example(tmp_path: Path) -> None:
    out = tmp_path / "slo-rules.yaml"
    out.write_text(slo.render_yaml(slo.load_spec(EXAMPLE)), encoding="utf-8")
    proc = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 56 rules found" in proc.stdout


SCENARIOS = {
    # test file -> spec whose rendered rules it loads
    "slo-availability.test.yaml": "slo-availability.spec.yaml",
    "slo-availability-ticket.test.yaml": "slo-availability.spec.yaml",
    "slo-sli-types.test.yaml": "slo-sli-types.spec.yaml",
}


@pytest.fixture(scope="module")
def promtool_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Render each spec next to a copy of its test file; run the promtool tests in parallel."""
    work = tmp_path_factory.mktemp("promtool-slo")
    for test_file, spec_file in SCENARIOS.items():
        rules = work / spec_file.replace(".spec.yaml", ".rules.yaml")
        rules.write_text(slo.render_yaml(slo.load_spec(PROMTOOL_DIR / spec_file)),
                         encoding="utf-8")
        shutil.copy(PROMTOOL_DIR / test_file, work / test_file)

    def run(test_file: str) -> tuple[int, str]:
        proc = subprocess.run([str(PROMTOOL), "test", "rules", str(work / test_file)],
                              capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stdout + proc.stderr

    with ThreadPoolExecutor(max_workers=len(SCENARIOS)) as pool:
        return dict(zip(SCENARIOS, pool.map(run, SCENARIOS), strict=True))


@needs_promtool
@pytest.mark.parametrize("test_file", sorted(SCENARIOS))
def test_promtool_burn_rate_scenarios(test_file: str,
                                      promtool_results: dict[str, tuple[int, str]]) -> None:
    rc, output = promtool_results[test_file]
    assert rc == 0, output
    assert "SUCCESS" in output

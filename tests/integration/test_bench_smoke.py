"""Smoke run of ``driftline bench throughput --quick``: the command works end to end on a
real broker and writes its JSON, Markdown and plot. Not a timed test: no figure is
compared with a target here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KEYS = ("raw_eps", "faust_eps", "quix_eps", "bytewax_eps", "envelope_eps", "single_eps",
        "envelope_vs_raw", "envelope_vs_faust", "single_vs_faust", "single_vs_quix",
        "single_vs_bytewax", "single_vs_raw")


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _leftovers(run_id: str) -> list[str]:
    """Command lines of processes still running with this run's topic or group names."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"bench-{run_id}" in cmd:
            out.append(cmd)
    return out


def test_throughput_quick_raw_and_driftline(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    results = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, "-m", "driftline.streams", "bench", "throughput", "--quick",
         "--events", "20000", "--baselines", "raw", "--checks", "--bootstrap", kafka_bootstrap,
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "DRIFTLINE_BENCH_RESULTS": str(results)})
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in KEYS:
        assert key in data, key
    for key in ("raw_eps", "envelope_eps", "single_eps", "envelope_vs_raw", "single_vs_raw"):
        assert _number(data[key]), (key, data[key])
    assert data["envelope_vs_raw"] == pytest.approx(data["envelope_eps"] / data["raw_eps"])
    assert data["single_vs_raw"] == pytest.approx(data["single_eps"] / data["raw_eps"])
    # --checks: the envelope worker with the optional checks off, and keeping predictions
    for key in ("envelope_checks_off_eps", "envelope_labels_eps"):
        assert _number(data[key]), (key, data[key])
    assert data["envelope_checks_cost"] == pytest.approx(
        data["envelope_checks_off_eps"] / data["envelope_eps"])
    assert data["envelope_labels_cost"] == pytest.approx(
        data["envelope_checks_off_eps"] / data["envelope_labels_eps"])
    assert data["details"]["envelope_checks_off"]["n"] == data["details"]["envelope_labels"]["n"] \
        == 20_000
    # and every check with shadow candidates, against the same events with none
    both = data["data"]["shadow_events"]
    assert both > 20_000 and data["data"]["shadow_models"] == 2
    for key in ("envelope_candidates_checks_off", "envelope_all_checks",
                "envelope_labels_segments_shadow"):
        assert _number(data[f"{key}_eps"]), key
        assert data["details"][key]["n"] == both and data["details"][key]["dead_letters"] == 0
    assert data["envelope_all_checks_cost"] == pytest.approx(
        data["envelope_candidates_checks_off_eps"] / data["envelope_all_checks_eps"])
    # and the same ratios past the first 10 % of events (None where a run is too short)
    a, b = data["steady_eps"]["envelope_checks_off"], data["steady_eps"]["envelope_labels"]
    assert data["steady_ratios"]["envelope_labels_cost"] == (pytest.approx(a / b) if a and b
                                                             else None)
    # and the label join, segments and shadow pairing alone, against the same events
    assert data["envelope_labels_segments_shadow_cost"] == pytest.approx(
        data["envelope_candidates_checks_off_eps"] / data["envelope_labels_segments_shadow_eps"])
    for name in ("faust", "quix", "bytewax"):  # not requested: skipped, with the reason
        assert data[f"{name}_eps"] is None
        assert "not requested" in data["skipped"][name]
    for key in ("envelope_vs_faust", "single_vs_faust", "single_vs_quix", "single_vs_bytewax"):
        assert data[key] is None
    assert data["details"]["single"]["n"] == data["details"]["envelope"]["n"] == 20_000
    assert data["details"]["single"]["dead_letters"] == 0
    for key in ("envelope", "envelope_labels", "envelope_labels_segments_shadow"):
        d = data["details"][key]  # what each driftline consumer reports besides its rate
        assert d["batches"] >= 1 and d["peak_rss_mib"] > 50, (key, d)
        assert d["checkpoints"] >= 0 and 0 <= d["checkpoint_s"] <= d["n"] / d["eps"], (key, d)
        assert d["snapshot_mib"] >= 0, (key, d)
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["single_event_scanner"] == "compiled"  # CI builds it
    assert data["machine"]["window_kernels"] == "compiled"  # and the kernels
    assert (results / "throughput.md").read_text().count("|") > 10
    assert (results / "throughput.png").exists()
    assert _leftovers(data["run_id"]) == []

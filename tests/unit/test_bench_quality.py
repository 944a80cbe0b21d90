"""``driftline bench quality --quick`` end to end (no broker): it writes its JSON and
Markdown, driftline stays quiet on the no-drift stream (with a categorical column wider
than the kept top K) and finds every change within two panes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftline.benchmarks import quality


def test_quick_run_is_quiet_without_drift_and_finds_every_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_BENCH_RESULTS", str(tmp_path))  # not the published tables
    data = quality.run(quick=True, json_out=tmp_path / "quality.json")
    assert json.loads((tmp_path / "quality.json").read_text())["features"] == 22
    assert (tmp_path / "quality.md").read_text().startswith("| detector |")
    combined, per_column = data["results"][quality.COMBINED], data["results"][quality.PER_COLUMN]
    for r in (combined, per_column):
        assert r["events_no_drift"] == 250_000
        assert r["false_alerts_per_million"] <= 4  # at most one alert (target: 1 per 1M)
    for scenario, (_, marginals_unchanged, _) in quality.SCENARIOS.items():
        assert combined[scenario] is not None and combined[scenario] < 2_000, scenario
        if not marginals_unchanged:
            assert per_column[scenario] is not None and per_column[scenario] < 2_000, scenario
    two = data["two_sample"]["driftline evaluate (chi2 per column + multivariate)"]
    assert two["no drift"] <= 0.12 and all(two[s] == 1.0 for s in quality.SCENARIOS)

"""Change-point estimates, the investigation's analysis and its HTML report."""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors.changepoint import binary_segmentation, cusum
from driftline.detectors.reference import build_profile
from driftline.streams.investigation import (
    CHANGE_SIGNIFICANCE,
    analyse,
    parse_segment,
    parse_since,
    relative_time,
    segment_rows,
)
from driftline.streams.report_html import NO_PLOTS, render_html

F = 6


@pytest.mark.parametrize("seed", range(10))
def test_cusum_finds_the_change_within_one_pane(seed: int) -> None:
    """Per-pane chi-square statistics (df 15) of a stream whose shift starts at pane 23."""
    rng = np.random.default_rng(seed)
    before = rng.chisquare(15, 23)
    after = rng.noncentral_chisquare(15, 40.0, 17)
    cp = cusum(np.r_[before, after])
    assert cp is not None and abs(cp.index - 23) <= 1
    assert cp.statistic > CHANGE_SIGNIFICANCE and cp.after > cp.before


def test_cusum_on_no_change_is_not_significant_and_short_series_give_none() -> None:
    rng = np.random.default_rng(3)
    stats = [cusum(rng.chisquare(15, 40)).statistic for _ in range(200)]  # type: ignore[union-attr]
    assert np.mean(np.asarray(stats) >= CHANGE_SIGNIFICANCE) <= 0.02
    assert cusum([1.0]) is None and cusum([1.0, 2.0], min_size=2) is None


def test_binary_segmentation_finds_two_changes() -> None:
    rng = np.random.default_rng(5)
    x = np.r_[rng.normal(0, 1, 30), rng.normal(5, 1, 30), rng.normal(-3, 1, 30)]
    assert [c.index for c in binary_segmentation(x)] in ([30, 60], [29, 60], [30, 61])
    assert binary_segmentation(rng.normal(0, 1, 90)) == []


def test_since_and_segment_arguments() -> None:
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600.0
    with pytest.raises(ValueError):
        parse_since("yesterday")
    # naive ISO is UTC and epoch seconds are taken, as by annotate --ts and event ts
    assert parse_since("2026-01-01T00:00:00") == 1767225600.0
    assert parse_since("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_since("1767225600") == parse_since("1767225600.0") == 1767225600.0
    for bad in ("nan", "inf", "2026-13-01T00:00:00"):
        with pytest.raises(ValueError):
            parse_since(bad)
    assert parse_segment(["region=eu", "tier=a=b"]) == {"region": "eu", "tier": "a=b"}
    with pytest.raises(ValueError):
        parse_segment(["region"])
    # one value per key: a second value would silently win
    assert parse_segment(["region=eu", "region=eu"]) == {"region": "eu"}
    with pytest.raises(ValueError, match="names region twice"):
        parse_segment(["region=eu", "region=us"])
    # nanosecond or millisecond epochs, and times past year 9999: an error, not a crash later
    for bad in ("1795864540000000000", "1e20", "1795864540000", "-1"):
        with pytest.raises(ValueError, match="epoch seconds"):
            parse_since(bad)


def _stream(seed: int = 1, n: int = 20_000, start: int = 12_000, shift: float = 0.6):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(20_000, F))
    names = tuple(f"f{i}" for i in range(F))
    pred_ref = 1 / (1 + np.exp(-ref[:, 1]))
    profile = build_profile("m", {n_: ref[:, i] for i, n_ in enumerate(names)},
                            prediction=pred_ref, created_at=0.0)
    x = rng.normal(size=(n, F))
    x[start:, 1] += shift
    ts = 1_000_000.0 + np.arange(n, dtype=float)  # one event per second
    b = make_batch(x, ts=ts, prediction=1 / (1 + np.exp(-x[:, 1])))
    seg = np.empty(n, dtype=object)
    seg[:] = [{"region": "eu"} if i % 2 else {"region": "us"} for i in range(n)]
    return profile, replace(b, segment=seg)


def test_analysis_names_the_feature_the_start_and_the_closest_change() -> None:
    profile, batch = _stream()
    true_ts = 1_000_000.0 + 12_000
    changes = [
        {"model": "m", "kind": "deploy", "ts": true_ts - 90, "text": "v2 rolled out"},
        {"model": "m", "kind": "pipeline", "ts": true_ts - 5000, "text": "backfill"},
        {"model": "m", "kind": "schema", "ts": true_ts + 5000, "text": "after the change"},
        {"model": "other", "kind": "deploy", "ts": true_ts - 10, "text": "another model"},
    ]
    inv = analyse(profile, [batch], changes, pane_size=500)
    assert inv.n_events == 20_000 and inv.drift
    assert inv.drifted == ["f1"] and inv.top_feature == "f1"
    assert inv.prediction is not None and inv.prediction.drift
    cp = inv.change_point
    assert cp is not None and cp["significant"] and cp["feature"] == "f1"
    assert abs(cp["pane"] - 12_000 // inv.pane_size) <= 1
    assert abs(cp["ts"] - true_ts) <= inv.pane_size
    assert [c["text"] for c in inv.changes] == ["v2 rolled out", "backfill"]
    first = inv.changes[0]["seconds_before"]  # the pane starts at most one pane off
    assert relative_time(first) == (f"{first:.0f} s before" if first >= 0 else
                                    f"{-first:.0f} s after (inside the change pane)")
    d = inv.to_dict()
    assert d["drifted_features"] == ["f1"] and d["prediction_drift"] is True


def test_relative_time_of_a_change_event() -> None:
    assert relative_time(120.4) == "120 s before" and relative_time(0.0) == "0 s before"
    assert relative_time(-30.0) == "30 s after (inside the change pane)"


def test_analysis_of_one_segment_and_of_no_drift() -> None:
    profile, batch = _stream(shift=0.0)
    rows = segment_rows(batch, {"region": "eu"})
    assert rows.size == 10_000 and all(s["region"] == "eu" for s in batch.segment[rows])
    inv = analyse(profile, [batch], [], segment={"region": "eu"})
    assert not inv.drift and inv.drifted == []
    assert inv.change_point is not None and not inv.change_point["significant"]


@pytest.mark.parametrize("plots", [True, False])
def test_html_report_names_the_drifted_feature(plots: bool) -> None:
    profile, batch = _stream()
    changes = [{"model": "m", "kind": "deploy", "ts": 1_011_900.0, "text": "v2 <rolled> out"}]
    page = render_html(analyse(profile, [batch], changes), plots=plots)
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    assert "f1" in page and "DRIFT" in page and "v2 &lt;rolled&gt; out" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    if plots:
        assert page.count("data:image/png;base64,") >= 2 and NO_PLOTS not in page
    else:
        assert "data:image/png" not in page and NO_PLOTS in page


class _Tags(HTMLParser):
    """Start tags and attribute names of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [a for a, _ in attrs]


@pytest.mark.parametrize("plots", [True, False])
def test_html_report_escapes_hostile_feature_names_segments_and_changes(plots: bool) -> None:
    """Data-derived strings (feature names, segment values, change texts) are text on the
    page, never markup: no script element and no event-handler attribute appear."""
    rng = np.random.default_rng(2)
    names = ("<script>alert(1)</script>", 'x" onmouseover="alert(2)', "f2")
    ref = rng.normal(size=(5_000, 3))
    profile = build_profile("m", {n: ref[:, i] for i, n in enumerate(names)}, created_at=0.0)
    x = rng.normal(size=(6_000, 3))
    x[3_000:, 0] += 1.0
    batch = make_batch(x, ts=1_000_000.0 + np.arange(6_000.0), names=names)
    seg = np.empty(6_000, dtype=object)
    seg[:] = [{"region": "<img src=x onerror=alert(3)>"}] * 6_000
    batch = replace(batch, segment=seg)
    changes = [{"model": "m", "kind": "deploy", "ts": 1_002_900.0,
                "text": "<script>alert(4)</script>"}]
    page = render_html(analyse(profile, [batch], changes,
                               segment={"region": "<img src=x onerror=alert(3)>"}),
                       plots=plots)
    parsed = _Tags()
    parsed.feed(page)
    assert "script" not in parsed.tags
    assert not any(a.startswith("on") for a in parsed.attrs), parsed.attrs
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page
    assert "onerror=alert(3)&gt;" in page


def test_cdf_samples_span_the_whole_reference_and_window() -> None:
    """The report's CDF points cover each side's range (the profile's sample is sorted:
    its first 2,000 values are its lowest 40%), for windows of any size."""
    profile, batch = _stream(n=3_999)  # no drift before 12,000: the same distribution
    inv = analyse(profile, [batch], pane_size=500)
    col = profile.columns[0]
    d = next(d for d in inv.distributions if d["name"] == col.name)
    ref, cur = np.asarray(d["reference_sample"]), np.asarray(d["current_sample"])
    assert ref.size == cur.size == 2000
    assert ref[0] == np.min(col.sample) and ref[-1] == np.max(col.sample)
    assert cur[-1] == batch.numeric[:, 0].max() and np.all(np.diff(cur) >= 0)
    assert abs(np.median(ref) - np.median(col.sample)) < 0.05

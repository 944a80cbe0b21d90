"""The shared check battery, run on the windowed multi-feature detector (count and time panes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from synth import make_batch

from driftline.detectors.checks import ALL_CHECKS, DetectorCase
from driftline.detectors.monitor import ModelMonitor, MonitorConfig
from driftline.detectors.reference import build_profile

F = 8
_rng = np.random.default_rng(42)
_ref = _rng.normal(size=(10_000, F))
PROFILE = build_profile("m", {f"f{i}": _ref[:, i] for i in range(F)}, created_at=0.0)
T0 = 1_700_000_000.0


def _chunks(x: np.ndarray, size: int, timed: bool) -> list[Any]:
    out = []
    for k in range(0, len(x), size):
        ts = T0 + np.arange(k, min(k + size, len(x))) * 0.1 if timed else None
        out.append(make_batch(x[k : k + size], ts=ts, offset0=k))
    return out


def _case(name: str, config: MonitorConfig, timed: bool) -> DetectorCase:
    def no_drift(rng: np.random.Generator) -> list[Any]:
        return _chunks(rng.normal(size=(30_000, F)), 700, timed)

    def drift(rng: np.random.Generator) -> tuple[list[Any], int]:
        x = rng.normal(size=(20_000, F))
        x[12_000:, 2] += 0.7
        return _chunks(x, 700, timed), 12_000

    def positions(det: ModelMonitor, chunk: Any) -> list[int]:
        start = det.ring.seq - len(chunk)
        return [e.index - start for e in det.last_evaluations
                for a in e.alerts if a.state == "firing"]

    def output(det: ModelMonitor, returned: Any) -> Any:
        return [(e.index, e.window.n, e.chi2.round(9).tolist(), [a.alert_id for a in e.alerts])
                for e in returned]

    return DetectorCase(
        name=name,
        make=lambda: ModelMonitor(PROFILE, config),
        no_drift=no_drift,
        drift=drift,
        max_delay=3000,
        max_false_alarms=1,
        bad_inputs=[np.zeros(5), "not a batch", None],
        drift_positions=positions,  # type: ignore[arg-type]
        output_of=output,
    )


CASES = [
    _case("pane_chi2[count]", MonitorConfig(calibration_rounds=50), timed=False),
    _case("pane_chi2[time]", MonitorConfig(pane_seconds=100, calibration_rounds=50,
                                           min_samples=1000), timed=True),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_battery(check: Callable[[DetectorCase, int], object], case: DetectorCase) -> None:
    check(case, 3)

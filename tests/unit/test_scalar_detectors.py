"""river adapters: the shared battery, agreement with river one value at a time, exact state."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from driftline.detectors.checks import ALL_CHECKS, DetectorCase, check_detects_drift
from driftline.detectors.errors import InputError, SnapshotError
from driftline.detectors.river_adapters import (
    ADWIN,
    DDM,
    EDDM,
    HDDM_A,
    HDDM_W,
    KSWIN,
    SCALAR_DETECTORS,
    PageHinkley,
    RiverDetector,
)


def chunked(x: np.ndarray, rng: np.random.Generator, largest: int) -> list[np.ndarray]:
    """Split ``x`` into seeded chunks of 1..largest values (the first one is tiny)."""
    cuts, at = [], int(rng.integers(1, 4))
    while at < len(x):
        cuts.append(at)
        at += int(rng.integers(1, largest + 1))
    return np.split(x, cuts)


def gaussian(n_before: int, n_after: int, shift: float, largest: int) -> tuple[Any, Any]:
    """Streams for mean-shift detectors: N(0, 1), then N(shift, 1) after the change."""

    def no_drift(rng: np.random.Generator) -> list[np.ndarray]:
        return chunked(rng.normal(0.0, 1.0, n_before + n_after), rng, largest)

    def drift(rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
        x = np.r_[rng.normal(0.0, 1.0, n_before), rng.normal(shift, 1.0, n_after)]
        return chunked(x, rng, largest), n_before

    return no_drift, drift


def bernoulli(n_before: int, n_after: int, largest: int = 400) -> tuple[Any, Any]:
    """Streams for error-rate detectors: 0/1 errors at rate 0.1, then 0.4 after the change."""

    def no_drift(rng: np.random.Generator) -> list[np.ndarray]:
        return chunked((rng.random(n_before + n_after) < 0.1).astype(float), rng, largest)

    def drift(rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
        x = np.r_[rng.random(n_before) < 0.1, rng.random(n_after) < 0.4].astype(float)
        return chunked(x, rng, largest), n_before

    return no_drift, drift


BAD = [[np.nan], [1.0, np.inf], [0.0, 1.0, np.nan], [[0.0, 1.0]], "abc", {"a": 1}]
BAD_BINARY = [*BAD, [0.5], [0.0, 1.0, 2.0], [-1.0], [True, 3]]


def case(
    name: str,
    make: Callable[[], RiverDetector],
    streams: tuple[Any, Any],
    max_delay: int,
    max_false_alarms: int,
) -> DetectorCase:
    binary = make().binary
    return DetectorCase(
        name=name,
        make=make,
        no_drift=streams[0],
        drift=streams[1],
        max_delay=max_delay,
        max_false_alarms=max_false_alarms,
        bad_inputs=BAD_BINARY if binary else BAD,
        output_of=lambda det, _: tuple(det.warning_indices),
    )


# Parameters and bounds from a 20-40 seed survey (worst delay / false alarms, plus margin).
CASES = [
    case("adwin", ADWIN, gaussian(2000, 2000, 1.0, 400), 150, 1),
    case("page_hinkley", lambda: PageHinkley(delta=0.25, threshold=25.0),
         gaussian(2000, 2000, 1.0, 400), 100, 1),
    # KSWIN costs ~0.2-1 ms per value (a scipy ks_2samp call each): a short stream.
    case("kswin", lambda: KSWIN(alpha=1e-4, seed=7), gaussian(250, 250, 1.5, 60), 80, 1),
    case("ddm", lambda: DDM(warm_start=300), bernoulli(2000, 2000), 300, 3),
    case("eddm", lambda: EDDM(warm_start=100), bernoulli(2000, 2000), 400, 5),
    case("hddm_a", HDDM_A, bernoulli(2000, 2000), 250, 1),
    case("hddm_w", HDDM_W, bernoulli(2000, 2000), 200, 1),
]
BY_NAME = {c.name: c for c in CASES}
SEEDS = {c.name: (0,) if c.name == "kswin" else (0, 1) for c in CASES}


@pytest.mark.parametrize(
    ("case", "seed"),
    [(c, s) for c in CASES for s in SEEDS[c.name]],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_battery(check: Callable[[DetectorCase, int], object], case: DetectorCase,
                 seed: int) -> None:
    check(case, seed)


def river_reference(det: RiverDetector, x: np.ndarray) -> list[int]:
    """Indices where the bare river detector flags drift, fed one value at a time."""
    river = type(det)(**det._params()).river
    out = []
    for i, v in enumerate(x.tolist()):
        river.update(v)
        if river.drift_detected:
            out.append(i)
    return out


@pytest.mark.parametrize("name", list(BY_NAME))
def test_batches_flag_where_river_flags(name: str) -> None:
    """Chunked updates give river's own detection indices, and the change is caught."""
    c = BY_NAME[name]
    chunks, change = c.drift(np.random.default_rng(3))
    det = c.make()
    got, offset = [], 0
    for chunk in chunks:
        got += [offset + i for i in det.update(chunk).drift_indices]
        offset += len(chunk)
    want = river_reference(det, np.concatenate(chunks))
    assert got == want
    assert det.n_seen == offset
    first = next(i for i in got if i >= change)
    assert change <= first <= change + c.max_delay, (first, change)
    whole = c.make().update(np.concatenate(chunks)).drift_indices
    assert whole == got  # one batch or many: same global positions


def test_detection_delays_are_those_measured() -> None:
    """Delays (events after the change) on seed 0, against bounds that leave headroom."""
    delays = {name: check_detects_drift(BY_NAME[name], 0) for name in BY_NAME}
    assert delays["adwin"] <= 64  # one or two clock ticks (clock=32)
    assert delays["page_hinkley"] <= 50  # ~threshold / (shift - delta) = 33
    for name, d in delays.items():
        assert 0 <= d <= BY_NAME[name].max_delay, (name, d)


def test_registry_and_river_shape() -> None:
    assert set(SCALAR_DETECTORS) == {
        "adwin", "kswin", "page_hinkley", "ddm", "eddm", "hddm_a", "hddm_w"
    }
    for name, cls in SCALAR_DETECTORS.items():
        det = cls()
        assert det.name == name and not det.drift_detected and det.n_seen == 0
        assert det.update([]) is det and det.drift_indices == []
    adwin = ADWIN(delta=0.01, clock=4)
    assert (adwin.delta, adwin.clock, adwin.river.delta) == (0.01, 4, 0.01)


def test_binary_detectors_take_only_zero_one() -> None:
    det = DDM()
    det.update(np.array([0, 1, 1, 0], dtype=np.int8))
    det.update([True, False])
    for bad in ([0.5], [2], [-1.0], [np.nan]):
        with pytest.raises(InputError):
            det.update(bad)
    assert det.n_seen == 6


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (ADWIN, {"clock": 0}),
        (ADWIN, {"delta": 0.0}),
        (KSWIN, {"window_size": 50, "stat_size": 30}),  # river would crash on its first test
        (PageHinkley, {"mode": "sideways"}),
        (EDDM, {"alpha": 0.8, "beta": 0.9}),
        (HDDM_W, {"lambda_val": 2.0}),
        (DDM, {"warm_start": 1.5}),
    ],
)
def test_bad_parameters_are_refused(cls: type[RiverDetector], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_restore_takes_parameters_from_the_snapshot() -> None:
    x = np.random.default_rng(0).normal(size=500)
    src = ADWIN(delta=0.05, clock=8).update(x)
    dst = ADWIN()
    dst.restore(src.snapshot())
    assert (dst.delta, dst.clock) == (0.05, 8)
    assert dst.snapshot() == src.snapshot()


def test_wrong_kind_and_signature_are_refused() -> None:
    snap = ADWIN().update([1.0, 2.0]).snapshot()
    with pytest.raises(SnapshotError, match="kind"):
        KSWIN().restore(snap)
    signed = ADWIN().update([1.0]).snapshot(key=b"k")
    with pytest.raises(SnapshotError):
        ADWIN().restore(signed)
    with pytest.raises(SnapshotError):
        ADWIN().restore(signed, key=b"other")
    ok = ADWIN()
    ok.restore(signed, key=b"k")
    assert ok.n_seen == 1


def test_unknown_river_state_refuses_to_snapshot() -> None:
    """A river upgrade that adds state must fail loudly, not write a lossy snapshot."""
    det = PageHinkley().update([0.0, 1.0])
    det.river._new_state = 1.0
    with pytest.raises(SnapshotError, match="_new_state"):
        det.snapshot()


def test_kswin_random_sampler_state_round_trips() -> None:
    """KSWIN draws its comparison sample at random: the sampler's state is in the snapshot."""
    x = np.random.default_rng(5).normal(size=400)
    a = KSWIN(seed=None).update(x[:200])
    b = KSWIN(seed=None)
    b.restore(a.snapshot())
    assert a.river._rng.getstate() == b.river._rng.getstate()
    for chunk in np.split(x[200:], 4):
        assert a.update(chunk).river.p_value == b.update(chunk).river.p_value


# ADWIN(clock=4) after N(0,1) x 700 then N(2,1) x 300 (default_rng(11)): the snapshot
# written by river 0.23, whose ADWIN is Cython (river >= 0.24 runs a Rust port of it).
ADWIN_023 = (
    "RExTMQAAAjF7ImtpbmQiOiJkcmlmdGxpbmUucml2ZXIuYWR3aW4iLCJ2ZXJzaW9uIjoxLCJtZXRhIjp7InBhcmFt"
    "cyI6eyJkZWx0YSI6MC4wMDIsImNsb2NrIjo0LCJtYXhfYnVja2V0cyI6NSwibWluX3dpbmRvd19sZW5ndGgiOjUs"
    "ImdyYWNlX3BlcmlvZCI6MTB9LCJuX3NlZW4iOjEwMDAsImRyaWZ0X2luZGljZXMiOls3MTVdLCJ3YXJuaW5nX2lu"
    "ZGljZXMiOltdLCJzdGF0ZSI6eyJpbnRzIjp7Im5fYnVja2V0cyI6NTQzLCJtYXhfbl9idWNrZXRzIjo1MzgsInRp"
    "Y2siOjI4NCwibl9kZXRlY3Rpb25zIjowfSwiZHJpZnQiOmZhbHNlfX0sImFycmF5cyI6eyJzY2FsYXJzIjp7ImR0"
    "eXBlIjoiPGY4Iiwic2hhcGUiOls0XSwib2Zmc2V0IjowLCJuIjozMn0sImJ1Y2tldF9jb3VudCI6eyJkdHlwZSI6"
    "IjxpOCIsInNoYXBlIjpbNl0sIm9mZnNldCI6MzIsIm4iOjQ4fSwiYnVja2V0X3RvdGFsIjp7ImR0eXBlIjoiPGY4"
    "Iiwic2hhcGUiOls2LDZdLCJvZmZzZXQiOjgwLCJuIjoyODh9LCJidWNrZXRfdmFyaWFuY2UiOnsiZHR5cGUiOiI8"
    "ZjgiLCJzaGFwZSI6WzYsNl0sIm9mZnNldCI6MzY4LCJuIjoyODh9fX2suqqO8c2BQFoUFaV5O3NAAAAAAADAcUAA"
    "AAAAwMLjQAQAAAAAAAAABAAAAAAAAAAEAAAAAAAAAAQAAAAAAAAABAAAAAAAAAAFAAAAAAAAAKaOyOyBngBAOdd7"
    "6Aji/j8HGIePFhYRQGQIbmUJ3Ps/AAAAAAAAAAAAAAAAAAAAABmbfk8RdwhAh9YYgGsdDkDyWVLmyzwFQLTwAmZG"
    "MApAAAAAAAAAAAAAAAAAAAAAACOps1ztXCBAHikfDiUBIUCmXqAuBhUSQDKl0hcqnBBAAAAAAAAAAAAAAAAAAAAA"
    "AJ7pXqE7bTRAgkR4/0wmNEA++Rz5tiwzQE2WuMPo5ilAAAAAAAAAAAAAAAAAAAAAADQPSIP4V0BAOk2b/c3+QkDb"
    "GYisx687QGyK44C5rzpAAAAAAAAAAAAAAAAAAAAAACKJEJo7V1FA5uZ5Ir3/S0DBKIu6J/dMQDRk76E2dVJAfF7b"
    "s0evUEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAOxp+Zmo"
    "oqU/vJJpNVtZ3T+IH4stOn3gPzHd/2fKu+A/AAAAAAAAAAAAAAAAAAAAAKuLwC3aywpAuv23LMQc3D/tNSVUI6kO"
    "QGgs0pN6kR9AAAAAAAAAAAAAAAAAAAAAAJpJ6XR95RZAT/bzeMGjEECNOuE3OXoOQPKmfsTqfyZAAAAAAAAAAAAA"
    "AAAAAAAAAB0jNrrKMypA89kxFTgUPEA9ftBHaZ4rQEU4ZWHililAAAAAAAAAAAAAAAAAAAAAAL8cV+GooT9A0puz"
    "2Z+7OkBGV3wXr4VHQJNisY79zT9AWJVcfySHO0AAAAAAAAAAAA=="
)


def test_adwin_snapshot_crosses_river_versions() -> None:
    """river 0.23's snapshot equals the installed river's, and continues exactly."""
    rng = np.random.default_rng(11)
    x = np.r_[rng.normal(0, 1, 700), rng.normal(2, 1, 300), rng.normal(0, 1, 500)]
    golden = base64.b64decode(ADWIN_023)
    fresh = ADWIN(clock=4).update(x[:1000])
    assert fresh.drift_indices == [715]
    assert fresh.snapshot() == golden
    restored = ADWIN()
    restored.restore(golden)
    assert restored.update(x[1000:]).drift_indices == fresh.update(x[1000:]).drift_indices
    assert restored.drift_detected and restored.snapshot() == fresh.snapshot()


# -- alibi-detect front classes (optional extra) ---------------------------------------------
def test_alibi_adapters_say_how_to_install_the_extra() -> None:
    from driftline.detectors import alibi_adapters

    if alibi_adapters.available():
        pytest.skip("alibi-detect is installed")
    with pytest.raises(alibi_adapters.MissingExtra, match=r"pip install 'driftline\[alibi\]'"):
        alibi_adapters.CVMDriftOnlineAdapter(np.zeros(10), ert=100, window_sizes=[5])
    assert issubclass(alibi_adapters.MissingExtra, ImportError)


def alibi_cases() -> list[DetectorCase]:
    from driftline.detectors.alibi_adapters import CVMDriftOnlineAdapter, FETDriftOnlineAdapter

    ref = np.random.default_rng(0).normal(size=300)
    ref01 = (np.random.default_rng(0).random(300) < 0.3).astype(float)
    return [
        DetectorCase(
            "alibi_cvm",
            lambda: CVMDriftOnlineAdapter(ref, ert=200, window_sizes=[20, 40], n_bootstraps=1000),
            *gaussian(200, 200, 1.0, 60), max_delay=100, max_false_alarms=2, bad_inputs=BAD,
        ),
        DetectorCase(
            "alibi_fet",
            lambda: FETDriftOnlineAdapter(ref01, ert=200, window_sizes=[30], n_bootstraps=1000),
            lambda rng: chunked((rng.random(400) < 0.3).astype(float), rng, 60),
            lambda rng: (chunked(np.r_[rng.random(200) < 0.3, rng.random(200) < 0.7]
                                 .astype(float), rng, 60), 200),
            max_delay=100, max_false_alarms=2, bad_inputs=[[0.5], [np.nan], "x"],
        ),
    ]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_alibi_battery(check: Callable[[DetectorCase, int], object]) -> None:
    pytest.importorskip("alibi_detect")
    for c in alibi_cases():
        check(c, 0)

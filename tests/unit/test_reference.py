"""Reference profiles: building, the JSON contract, loading files, transport-free engine."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.errors import InputError, ProfileError
from driftline.detectors.reference import (
    SELECT_EVERY,
    ReferenceProfile,
    build_profile,
    profile_categorical,
)
from driftline.detectors.stats import chi_square
from driftline.detectors.tables import read_table
from driftline.schemas.validation import validator


def test_profile_round_trips_and_validates_against_its_schema() -> None:
    rng = np.random.default_rng(0)
    prof = build_profile(
        "fraud", {"amount": rng.lognormal(3, 1, 5000), "country": rng.choice(["de", "fr"], 5000),
                  "flag": rng.random(5000) > 0.5},
        prediction=rng.random(5000), model_version="v3", created_at=1.0)
    d = prof.to_dict()
    validator("reference_profile.v1").validate(d)
    back = ReferenceProfile.from_dict(d)
    assert back.to_dict() == d
    assert back.feature_names == ("amount", "country", "flag")
    assert back.reference_id == prof.reference_id and prof.reference_id.startswith("fraud@")
    amount = back.columns[0]
    assert amount.n_bins == 16 and int(amount.counts.sum()) == 5000  # type: ignore[union-attr]


def test_a_reference_of_values_near_the_float_limit_round_trips() -> None:
    """Their sums overflow: the moments are still finite, so the profile can be read
    back (one built from a model's first events is written and read on every restart);
    a column whose spread overflows is left out of the multivariate statistics."""
    rng = np.random.default_rng(1)
    huge = rng.uniform(-1, 1, 400) * 1.7e308
    prof = build_profile("m", {"huge": huge, "y": rng.normal(size=400), "z": rng.normal(size=400)},
                         created_at=0.0)
    col = prof.columns[0]
    assert np.isfinite([col.mean, col.std]).all()  # type: ignore[union-attr]
    assert abs(col.mean - float(np.mean(huge / 1e308)) * 1e308) < 1e300  # type: ignore[union-attr]
    back = ReferenceProfile.from_json(prof.to_json())
    assert back.reference_id == prof.reference_id
    assert prof.multivariate is not None
    assert [e["name"] for e in prof.multivariate["encoding"]["numeric"]] == ["y", "z"]
    normal = rng.lognormal(3, 1, 1000)  # ordinary values: the moments as numpy takes them
    c = build_profile("m", {"x": normal}, created_at=0.0).columns[0]
    assert (c.mean, c.std) == (float(normal.mean()), float(normal.std()))  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    {"schema": "other"},
    {"schema": "driftline.reference/v1", "model": "m"},
])
def test_malformed_profiles_raise_profile_error(bad: dict[str, object]) -> None:
    with pytest.raises(ProfileError):
        ReferenceProfile.from_dict(bad)


def test_npz_with_objects_is_refused_not_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "evil.npz"
    np.savez(p, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="object arrays"):
        read_table(p)


def test_detectors_import_no_kafka_or_faust() -> None:
    code = ("import sys, driftline.detectors.monitor, driftline.detectors.offline, "
            "driftline.detectors.reference; "
            "bad = [m for m in ('faust', 'confluent_kafka', 'aiokafka', 'kafka') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


_VALUES: list[object] = [0, 1, -2, 2**64, 10**400, 0.5, -0.0, 1e308, float("nan"), float("inf"),
                         -float("inf"), True, False, None, "1.5", [1.0], {"a": 1}, np.float64(2.5),
                         np.int64(3), np.nan, 5e-324]


def _per_value(raw: object, what: str) -> tuple[str, object]:
    """The reference behaviour: every value through ``_finite``."""
    from driftline.detectors.reference import _finite

    try:
        return "ok", np.asarray([_finite(x, what) for x in raw], dtype=np.float64)  # type: ignore[attr-defined]
    except (ProfileError, OverflowError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("seed", range(300))
def test_bulk_number_lists_decide_like_the_per_value_check(seed: int) -> None:
    """A reference's samples and edges are converted in one numpy call when they are plain
    numbers; whatever the list holds, the result (values or the error and its message) is
    the per-value check's."""
    from driftline.detectors.reference import _finites

    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 8))
    plain = rng.random() < 0.5  # mostly numbers, so the bulk path is taken and checked
    pool = _VALUES[:7] if plain else _VALUES
    raw: object = [pool[int(rng.integers(0, len(pool)))] for _ in range(n)]
    if rng.random() < 0.05:
        raw = "12" if rng.random() < 0.5 else (1.0, 2.0)
    want = _per_value(raw, "column 'x' sample")
    try:
        got: tuple[str, object] = "ok", _finites(raw, "column 'x' sample")
    except (ProfileError, OverflowError, TypeError) as exc:
        got = type(exc).__name__, str(exc)
    assert got[0] == want[0]
    if want[0] == "ok":
        assert isinstance(got[1], np.ndarray) and got[1].dtype == np.float64
        np.testing.assert_array_equal(got[1], want[1])  # type: ignore[arg-type]
        assert np.signbit(got[1]).tolist() == np.signbit(want[1]).tolist()  # type: ignore[arg-type]
    else:
        assert got[1] == want[1]


def test_a_reference_with_a_bad_sample_value_names_it() -> None:
    prof = build_profile("m", {"x": np.arange(100.0)})
    d = prof.to_dict()
    d["numeric"][0]["sample"][3] = True
    with pytest.raises(ProfileError, match=r"column 'x' sample must be a finite number, not True"):
        ReferenceProfile.from_dict(d)
    d["numeric"][0]["sample"][3] = float("inf")
    with pytest.raises(ProfileError, match=r"column 'x' sample must be a finite number, not inf"):
        ReferenceProfile.from_dict(d)


def test_few_categories_are_counted_on_every_row() -> None:
    rng = np.random.default_rng(0)
    values = [None if k == 0 else f"c{k}" for k in rng.integers(0, 10, 3000)]
    prof = profile_categorical("c", values)
    assert len(prof.categories) == 9 and prof.counts[-1] == 0
    assert int(prof.counts.sum()) + prof.missing == 3000


def test_many_categories_are_chosen_on_rows_that_are_not_counted() -> None:
    """Over ``top_k`` categories: the kept ones are chosen on every eighth row and counted
    (with ``other`` and missing values) on the rest, so their counts are not inflated."""
    rng = np.random.default_rng(1)
    values = [f"u{k}" for k in rng.integers(0, 40, 4000)]
    values[5] = None  # a counted row
    prof = profile_categorical("c", values, top_k=32)
    assert len(prof.categories) == 32
    assert int(prof.counts.sum()) + prof.missing == 3500 and prof.missing == 1
    chosen = Counter(values[::SELECT_EVERY]).most_common(32)
    assert set(prof.categories) == {c for c, _ in chosen}
    counted = Counter(v for i, v in enumerate(values) if i % SELECT_EVERY)
    assert [int(x) for x in prof.counts[:-1]] == [counted[c] for c in prof.categories]


def test_the_other_bin_of_a_wide_column_keeps_to_its_level_in_large_windows() -> None:
    """40 equally likely categories, 32 kept: with the kept counted on the rows that chose
    them the test rejected at 2.3x its level (1e-2) in 5,000-event windows; now at it."""
    rng = np.random.default_rng(2)
    p_values = []
    for _ in range(40):
        prof = profile_categorical("c", [f"u{k}" for k in rng.integers(0, 40, 5000)])
        index = {c: i for i, c in enumerate(prof.categories)}
        lut = np.asarray([index.get(f"u{k}", len(index)) for k in range(40)])
        wins = np.stack([np.bincount(lut[rng.integers(0, 40, 5000)], minlength=33)
                         for _ in range(100)])
        p_values.append(chi_square(np.repeat(prof.counts[None, :], 100, axis=0), wins).p_value)
    rate = float((np.concatenate(p_values) < 1e-2).mean())
    assert 0.004 < rate < 0.016, rate  # 4,000 tests: 40 expected at the level

"""Reference profiles: building, the JSON contract, loading files, transport-free engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftline.detectors.errors import InputError, ProfileError
from driftline.detectors.reference import ReferenceProfile, build_profile
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

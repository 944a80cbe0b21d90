"""Property-based fuzzing of every decoder and loader (hypothesis).

Each test drives one target of :mod:`driftline.benchmarks.fuzz` (the generators and
checks ``driftline bench fuzz`` runs at scale) with at least 10,000 generated inputs:
hypothesis draws the seeds of the hostile/near-valid generators and adds inputs from its
own strategies (arbitrary bytes, arbitrary JSON, structured events), so a failure is
shrunk and reported with its input. The property: the documented outcome (object, or the
documented error with a ``code: detail`` reason whose code is in ``REASON_CODES``), never
another exception.

``KNOWN`` lists defects this fuzzing found that are not fixed yet (none at present), each
pinned below by a deterministic ``xfail(strict=True)`` test with its minimal input: the
fuzz tests tolerate exactly those (matched by exception type and the function that raised)
and fail on anything new. When a fix lands, its pinned test XPASSes (strict: the suite
fails), the xfail becomes a regression test and the ``KNOWN`` entry is removed.
"""

from __future__ import annotations

import json
import os
import random
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.benchmarks import fuzz
from driftline.detectors.errors import ProfileError

MIN_INPUTS = 10_000
FUZZ = settings(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- known defects


@dataclass(frozen=True)
class Known:
    """A defect found by this fuzzing, tolerated until fixed (pinned by an xfail test)."""

    targets: tuple[str, ...]
    exc: type[BaseException]
    where: str  # "<file>:<function>" ("<file>:*": any) of the innermost driftline frame
    test: str  # the strict-xfail test pinning it


#: Defects the fuzz tests tolerate until their fix lands (each pinned by a strict xfail
#: test below). Empty: every defect this fuzzing found so far is fixed, and its pinned test
#: is a regression test.
KNOWN: tuple[Known, ...] = ()


def _where(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if any(p in f.filename for p in ("/schemas/", "/detectors/", "/streams/",
                                               "/benchmarks/"))]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.name}"


def _known(target: str, exc: BaseException) -> Known | None:
    where = _where(exc)
    for k in KNOWN:
        same = where == k.where or (k.where.endswith(":*") and where.startswith(k.where[:-1]))
        if target in k.targets and isinstance(exc, k.exc) and same:
            return k
    return None


# ----------------------------------------------------------------------------- driver


@dataclass
class Tally:
    inputs: int = 0
    outcomes: Counter[str] | None = None
    known: Counter[str] | None = None


def drive(name: str, *, check: Callable[[Any], Counter[str]] | None = None,
          extra: st.SearchStrategy[list[Any]] | None = None, per_example: int = 25,
          min_inputs: int = MIN_INPUTS) -> Tally:
    """Run one fuzz target until ``min_inputs`` inputs went through its check."""
    target = fuzz.targets()[name]
    if check is not None:
        target = fuzz.Target(name, target.make, check, target.batched)
    fuzz.corpus()
    tally = Tally(0, Counter(), Counter())
    extra = extra if extra is not None else st.just([])

    def one(seed: int, more: list[Any]) -> None:
        rng = random.Random(seed)
        inputs: list[Any] = list(more)
        while len(inputs) < per_example:
            inputs += target.make(rng)
        if target.batched:
            runs = list(fuzz.run_target(target, inputs))
        else:
            runs = [r for x in inputs for r in fuzz.run_target(target, [x])]
        for x, out in runs:
            if isinstance(out, Exception):
                k = _known(name, out)
                if k is None:
                    shown = x[:3] if isinstance(x, list) else x
                    raise AssertionError(f"{name}: {type(out).__name__} at {_where(out)} on "
                                         f"{shown!r:.1500}") from out
                assert tally.known is not None
                tally.known[k.test] += 1
            else:
                assert tally.outcomes is not None
                tally.outcomes.update(out)
        tally.inputs += len(inputs)

    while tally.inputs < min_inputs:
        examples = max((min_inputs - tally.inputs) // per_example + 1, 10)
        test = given(seed=st.integers(0, 2**64 - 1), more=extra)(one)
        settings(FUZZ, max_examples=examples)(test)()
    assert tally.inputs >= min_inputs
    return tally


def _rejections(t: Tally) -> Counter[str]:
    assert t.outcomes is not None
    return Counter({k: v for k, v in t.outcomes.items() if k != "accepted"})


# ----------------------------------------------------------------------------- strategies

_scalar = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
raw_messages = st.lists(st.binary(max_size=80) | json_values.map(fuzz.dumps), max_size=6)
_feature = (st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**63), 2**64 - 1)
            | st.none() | st.booleans() | st.text(max_size=12))
events = st.fixed_dictionaries(
    {"model": st.text(min_size=0, max_size=12) | st.sampled_from(fuzz.MODELS),
     "features": st.dictionaries(st.text(max_size=10), _feature, max_size=6)},
    optional={"ts": st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
              "prediction": _feature | st.dictionaries(st.text(max_size=4), st.floats(0, 1), max_size=3),
              "segment": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(),
                                         max_size=18),
              "latency_ms": st.floats(-1, 1e6), "outcome": st.sampled_from(["ok", "error", "x"]),
              "event_id": st.text(max_size=8), "shadow_of": st.text(max_size=8)})
envelopes = st.builds(lambda m, evs: {"envelope": "driftline.batch/v1", "model": m,
                                      "events": [{k: v for k, v in e.items() if k != "model"}
                                                 for e in evs]},
                      st.sampled_from(fuzz.MODELS), st.lists(events, max_size=4))
inference_extra = st.lists(events.map(fuzz.dumps) | envelopes.map(fuzz.dumps), max_size=4).flatmap(
    lambda good: raw_messages.map(lambda bad: good + bad))
labels = st.fixed_dictionaries({"model": st.text(max_size=6), "event_id": st.text(max_size=6),
                                "label": _feature}, optional={"ts": _feature})
label_extra = st.lists(labels.map(fuzz.dumps), max_size=4).flatmap(
    lambda good: raw_messages.map(lambda bad: good + bad))


# ----------------------------------------------------------------------------- decoders


def test_decode_inference_never_raises_and_accounts_for_every_message() -> None:
    t = drive("decode_inference", extra=inference_extra, per_example=40)
    assert t.outcomes is not None and t.outcomes["accepted"] > 1000
    rejected = _rejections(t)
    # the generators reach every input-dependent reason code
    assert {"invalid_json", "not_object", "schema", "payload_too_large", "too_many_features",
            "string_too_long", "unknown_envelope", "too_many_segments"} <= set(rejected)


def test_decode_labels_never_raises_and_accounts_for_every_message() -> None:
    t = drive("decode_labels", extra=label_extra, per_example=40)
    assert t.outcomes is not None and t.outcomes["accepted"] > 1000
    assert {"invalid_json", "not_object", "schema", "string_too_long"} <= set(_rejections(t))


def test_decode_alert_returns_an_alert_or_a_coded_value_error() -> None:
    # a full second decode (schema validation, ~1-2 ms) on a sample keeps this under ~15 s
    def check(data: bytes) -> Counter[str]:
        return fuzz.check_alert(data, round_trip=hash(data) % 8 == 0)

    t = drive("decode_alert", check=check, extra=raw_messages)
    assert t.outcomes is not None and t.outcomes["accepted"] > 1000
    assert {"invalid_json", "not_object", "schema"} <= set(_rejections(t))


def test_decode_dead_letter_returns_a_dead_letter_or_a_coded_value_error() -> None:
    t = drive("decode_dead_letter", extra=raw_messages)
    assert t.outcomes is not None and t.outcomes["accepted"] > 1000


def test_decode_change_returns_a_change_or_a_coded_value_error() -> None:
    t = drive("decode_change", extra=raw_messages)
    assert t.outcomes is not None and t.outcomes["accepted"] > 1000


def test_reference_from_json_returns_a_usable_profile_or_profile_error() -> None:
    # building a ModelMonitor (calibration, multivariate) costs ~3-7 ms: one accepted input in 16
    def check(data: bytes) -> Counter[str]:
        return fuzz.check_reference(data, use=hash(data) % 16 == 0)

    t = drive("reference", check=check, extra=raw_messages, per_example=10)
    assert t.outcomes is not None
    assert t.outcomes["accepted"] > 500 and t.outcomes["ProfileError"] > 1000


# ----------------------------------------------------------------------------- snapshots


def test_unpack_returns_numeric_arrays_or_snapshot_error() -> None:
    blobs = st.lists(st.binary(max_size=120).map(lambda b: fuzz.Blob(b, False, True)), max_size=4)
    t = drive("unpack", extra=blobs)
    assert t.outcomes is not None and t.outcomes["accepted"] > 500


def test_monitor_restore_loads_or_rejects_atomically() -> None:
    t = drive("monitor_restore", per_example=10)
    assert t.outcomes is not None and t.outcomes["accepted"] > 500


def test_model_state_restore_loads_or_rejects() -> None:
    t = drive("model_state_restore", per_example=10)
    assert t.outcomes is not None and t.outcomes["accepted"] > 500


# ----------------------------------------------------------------------------- settings


def test_settings_from_env_validate_or_raise_validation_error() -> None:
    t = drive("settings", per_example=25)
    assert t.outcomes is not None
    assert t.outcomes["accepted"] > 1000 and t.outcomes["ValidationError"] > 1000


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.lower().startswith("driftline_")}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


@settings(FUZZ, max_examples=150)
@given(seed=st.integers(0, 2**64 - 1))
def test_settings_fields_model_agrees_with_settings_from_the_environment(seed: int) -> None:
    """The fast validator the fuzzing uses gives Settings()' outcome on real environments."""
    from pydantic import ValidationError

    from driftline.streams.settings import Settings

    env = fuzz.settings_env(random.Random(seed))
    try:
        fast: Any = fuzz.settings_fields_model()(**fuzz.env_to_fields(env))
    except ValidationError:
        fast = None
    with environment(env):
        try:
            real: Any = Settings()
        except ValidationError:
            real = None
    assert (fast is None) == (real is None), env
    if real is not None:  # as JSON text: NaN equals NaN there
        assert json.dumps(real.model_dump(), default=str) == json.dumps(fast.model_dump(),
                                                                         default=str), env


# ----------------------------------------------------------------------------- the worker's path


def test_processor_survives_hostile_batches_and_counts_every_message() -> None:
    """Hostile messages through the transport-free worker core: process() never raises,
    every message is applied or dead-lettered once, metric series stay bounded."""
    from prometheus_client import CollectorRegistry

    from driftline.detectors.monitor import MonitorConfig
    from driftline.schemas.limits import Limits
    from driftline.streams.metrics import WorkerMetrics
    from driftline.streams.processor import Incoming, Processor

    max_models, max_features = 4, 16
    registry = CollectorRegistry()
    proc = Processor(config=MonitorConfig(panes=2, pane_size=40, min_samples=40,
                                          calibration_rounds=10),
                     limits=Limits(max_features=max_features), metrics=WorkerMetrics(registry),
                     auto_reference_events=100, max_models=max_models)
    offset = [0]
    seen = Counter()

    @settings(FUZZ, max_examples=150)
    @given(seed=st.integers(0, 2**64 - 1), more=inference_extra)
    def one(seed: int, more: list[bytes]) -> None:
        rng = random.Random(seed)
        values = more + [fuzz.inference_message(rng) for _ in range(30)]
        msgs = [Incoming("fuzz", 0, offset[0] + i, v, 1.7e9) for i, v in enumerate(values)]
        offset[0] += len(values)
        out = proc.process(msgs)
        for d in out.dead_letters:
            fuzz.reason_code(d.reason, "processor")
        seen["messages"] += len(values)
        seen["dead_letters"] += len(out.dead_letters)

    one()
    assert seen["messages"] >= 4000
    tracked = {st.model for st in proc.models.values() if not st.model.startswith("~")}
    assert len(tracked) <= max_models


# ----------------------------------------------------------------------------- pinned defects
# Minimal inputs of the defects the fuzzing found. Each asserts the documented behaviour;
# a defect not fixed yet is pinned by an xfail(strict=True) test (an unexpected pass fails
# the suite, so the xfail and its KNOWN entry go when the fix lands).

DEEP = fuzz.Raw(b"[" * 1020 + b"]" * 1020)  # orjson accepts up to 1024 levels


def _doc(make: Callable[[random.Random], dict[str, Any]], **changes: Any) -> bytes:
    d = make(random.Random(1))
    d.update(changes)
    return fuzz.dumps(d)


# Found by this fuzzing and fixed: regression tests.

@pytest.mark.parametrize("decoder, make, field", [
    ("decode_alert", fuzz.alert_dict, "kind"),
    ("decode_dead_letter", fuzz.dead_letter_dict, "reason_code"),
    ("decode_change", fuzz.change_dict, "ts"),
])
def test_deeply_nested_invalid_field_is_a_schema_rejection(
        decoder: str, make: Callable[[random.Random], dict[str, Any]], field: str) -> None:
    """jsonschema used to raise RecursionError while rendering the message."""
    from driftline.schemas import codecs

    with pytest.raises(ValueError, match=r"^schema: "):
        getattr(codecs, decoder)(_doc(make, **{field: DEEP}))


def test_decoded_alert_re_encodes_or_is_rejected() -> None:
    """Integers beyond int64 used to pass the schema and break encode_alert (TypeError)."""
    from driftline.schemas.codecs import decode_alert, encode_alert

    d = fuzz.alert_dict(random.Random(1))
    d["window"]["last_offset"] = fuzz.Raw(b"18446744073709551616")
    try:
        alert = decode_alert(fuzz.dumps(d))
    except ValueError as exc:
        assert str(exc).startswith("schema: ")
        return
    assert decode_alert(encode_alert(alert)) == alert


def test_decoded_change_re_encodes_or_is_rejected() -> None:
    """Extra keys nested deeper than orjson writes (254) used to break encode_change."""
    from driftline.schemas.codecs import decode_change, encode_change

    data = _doc(fuzz.change_dict, extra=fuzz.Raw(b'{"a":' * 300 + b"1" + b"}" * 300))
    try:
        change = decode_change(data)
    except ValueError as exc:
        assert str(exc).startswith("schema: ")
        return
    encode_change(change)


def _reference(**changes: Any) -> bytes:
    d = orjson.loads(orjson.dumps(fuzz.corpus().references[0]))
    for path, value in changes.items():
        node = d
        *head, last = path.split("__")
        for k in head:
            node = node[int(k)] if k.isdigit() else node[k]
        node[last] = value
    return fuzz.dumps(d)


@pytest.mark.parametrize("data", [
    _reference(numeric__0__counts=[fuzz.Raw(b"1e300")] * 8),
    _reference(model=DEEP),
], ids=["counts-1e300", "deep-model"])
def test_reference_loader_raises_only_profile_error(data: bytes) -> None:
    """from_dict used to let OverflowError (int() of 1e300) and RecursionError (str() of a
    deep list) escape."""
    from driftline.detectors.errors import ProfileError
    from driftline.detectors.reference import ReferenceProfile

    with pytest.raises(ProfileError):
        ReferenceProfile.from_json(data)


@pytest.mark.parametrize("data", [
    _reference(numeric=[], categorical=[], prediction=None, multivariate=None),
    _reference(numeric__0__counts=[2**62] * 8),
    _reference(size=fuzz.Raw(b"1e300")),
    _reference(numeric__0__mean="nan"),
], ids=["no-columns", "counts-overflow-int64-sum", "size-1e300", "mean-nan-string"])
def test_reference_accepted_by_from_json_is_usable(data: bytes) -> None:
    """from_json used to accept profiles a worker could not use (ModelMonitor raised ValueError)
    or that to_json() wrote in a form from_json() refuses."""
    from driftline.detectors.reference import ReferenceProfile

    try:
        ReferenceProfile.from_json(data)
    except ProfileError:
        return  # rejected: fine
    fuzz.check_reference(data)  # accepted: re-encodes, builds a monitor, takes a batch


def _mv_changed(path: str, value: Any) -> dict[str, Any]:
    d = orjson.loads(orjson.dumps(fuzz.corpus().references[0]))
    node = d["multivariate"]
    *head, last = path.split(".")
    for k in head:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return d


_DEEP_LIST: Any = []
for _ in range(40):
    _DEEP_LIST = [_DEEP_LIST]


@pytest.mark.parametrize("path, value", [
    ("statistics.covariance.pairs", [[2**64 - 1] * 5] * 5),
    ("statistics.covariance.pairs", [[-1] * 5] * 5),
    ("statistics.covariance.pairs", [[0.5] * 5] * 5),
    ("statistics.covariance.pairs", [["1"] * 5] * 5),
    ("statistics.covariance.pairs", [[1] * 4] * 5),
    ("statistics.covariance.names", [1, 2, 3, 4, 5]),
    ("statistics.covariance.names", [_DEEP_LIST] * 5),
    ("encoding.numeric.0.name", ["x"]),
    ("encoding.numeric.0.lo", "-3"),
    ("encoding.numeric.0.scale", 10**400),
    ("encoding.onehot.0.category", 7),
    ("statistics.mmd_rff.bandwidth", "2.0"),
    ("statistics.mmd_rff.d", 128.0),
    ("statistics.pca_recon.e_var", True),
    ("statistics.covariance.scale", "1"),
    ("calibration", [["method", "x"]]),
    ("rows", 2**64 - 1),
], ids=lambda v: v if isinstance(v, str) else None)
def test_multivariate_reference_errors_are_profile_errors(path: str, value: Any) -> None:
    """The multivariate part used to be parsed with int()/float()/str(): an integer beyond
    int64 raised OverflowError out of ModelMonitor(), wrong types were coerced."""
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.reference import ReferenceProfile

    with pytest.raises(ProfileError):
        prof = ReferenceProfile.from_json(fuzz.dumps(_mv_changed(path, value)))
        ModelMonitor(prof, fuzz.small_monitor_config())


def test_deeply_nested_multivariate_part_is_a_profile_error() -> None:
    from driftline.detectors.reference import ReferenceProfile

    d = _mv_changed("calibration.exceed_5pct", DEEP)
    with pytest.raises(ProfileError, match="nested deeper"):
        ReferenceProfile.from_json(fuzz.dumps(d))


def test_unchanged_multivariate_part_still_loads() -> None:
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.reference import ReferenceProfile

    prof = ReferenceProfile.from_json(fuzz.dumps(_mv_changed("version", 1)))
    assert ModelMonitor(prof, fuzz.small_monitor_config()).mv is not None


def test_processor_survives_a_reference_it_cannot_use() -> None:
    from prometheus_client import CollectorRegistry

    from driftline.detectors.reference import ReferenceProfile
    from driftline.schemas.limits import Limits
    from driftline.streams.metrics import WorkerMetrics
    from driftline.streams.processor import Incoming, Processor

    proc = Processor(config=fuzz.small_monitor_config(), limits=Limits(),
                     metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=100)
    bad = ReferenceProfile.from_json(_reference(multivariate={"kind": "x"}))
    proc.set_reference(bad)  # what a worker does with every record of the references topic
    out = proc.process([Incoming("t", 0, i, orjson.dumps({"model": "m", "features": {"x": 1.0}}))
                        for i in range(5)])
    assert out.applied + len(out.dead_letters) == 5


def test_unpack_of_a_deeply_nested_kind_is_a_snapshot_error() -> None:
    """unpack used to repr() the header's kind: a deep list raised RecursionError, which the
    processor does not catch (an unsigned state topic could kill a worker)."""
    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.serialization import MAGIC, unpack

    header = b'{"kind":' + b"[" * 1000 + b"]" * 1000 + b',"version":1,"meta":{},"arrays":{}}'
    with pytest.raises(SnapshotError):
        unpack(MAGIC + len(header).to_bytes(4, "big") + header, "driftline.model")


def test_monitor_from_snapshot_checks_the_calibration_against_the_reference() -> None:
    """from_snapshot used to compare the snapshot's calibration scale with itself: a (4, 1)
    scale loaded and the first evaluation raised ValueError."""
    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.serialization import pack, unpack

    c = fuzz.corpus()
    meta, arrays, _ = unpack(c.snapshots["monitor"][0][0], "driftline.monitor")
    arrays["calibration.scale"] = arrays["calibration.scale"].reshape(-1, 1)
    try:
        mon, _ = ModelMonitor.from_snapshot(c.monitor_reference,
                                            pack("driftline.monitor", meta, arrays))
    except SnapshotError:
        return
    mon.update(fuzz.event_batch(random.Random(1), c.monitor_reference.feature_names, 45))


@pytest.mark.parametrize("target", [0, -5.0])
def test_monitor_snapshot_with_a_non_positive_target_run_length_is_a_snapshot_error(
        target: float) -> None:
    """MonitorConfig used to accept target_run_length 0: restore() loaded it and the first
    evaluation divided by zero (ZeroDivisionError in Calibration.alpha_eval)."""
    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.monitor import ModelMonitor, MonitorConfig
    from driftline.detectors.serialization import pack, unpack

    c = fuzz.corpus()
    meta, arrays, _ = unpack(c.snapshots["monitor"][0][0], "driftline.monitor")
    meta["config"]["target_run_length"] = target
    data = pack("driftline.monitor", meta, arrays)
    mon = ModelMonitor(c.monitor_reference, c.monitor_config)
    with pytest.raises(SnapshotError):
        mon.restore(data)
    with pytest.raises(SnapshotError):
        ModelMonitor.from_snapshot(c.monitor_reference, data)
    with pytest.raises(ValueError):
        MonitorConfig(target_run_length=target)


@pytest.mark.parametrize("scale", [0.0, -1.0, 0.5, 6.0, float("nan"), float("inf")])
def test_monitor_snapshot_with_a_calibration_scale_out_of_range_is_a_snapshot_error(
        scale: float) -> None:
    """restore() used to accept any finite scale: 0 made every statistic infinite (false
    alerts at every evaluation). calibrate() only writes scales within [1, 5]."""
    import numpy as np

    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.monitor import ModelMonitor
    from driftline.detectors.serialization import pack, unpack

    c = fuzz.corpus()
    meta, arrays, _ = unpack(c.snapshots["monitor"][0][0], "driftline.monitor")
    assert np.all((arrays["calibration.scale"] >= 1) & (arrays["calibration.scale"] <= 5))
    arrays["calibration.scale"] = np.full_like(arrays["calibration.scale"], scale)
    data = pack("driftline.monitor", meta, arrays)
    with pytest.raises(SnapshotError):
        ModelMonitor(c.monitor_reference, c.monitor_config).restore(data)
    with pytest.raises(SnapshotError):
        ModelMonitor.from_snapshot(c.monitor_reference, data)


def _state_blob(**meta_changes: Any) -> bytes:
    blob = fuzz.corpus().snapshots["model_state"][2][0]  # no monitor, pending rows
    magic, header, body, _ = fuzz._split(blob)
    assert header is not None
    header["meta"].update(meta_changes)
    return fuzz._join(magic, header, body)


def test_model_state_restore_rejects_counters_it_cannot_write() -> None:
    """restore used to accept counters beyond int64 that snapshot() cannot write (TypeError)."""
    from driftline.detectors.errors import SnapshotError
    from driftline.streams.model_state import ModelState

    c = fuzz.corpus()
    data = _state_blob(events_applied=fuzz.Raw(b"1180591620717411303424"))
    try:
        st = ModelState.restore(data, c.monitor_reference, c.monitor_config)
    except SnapshotError:
        return
    st.snapshot()


@pytest.mark.parametrize("pending", [
    [{"names": ["a", "b"], "numeric": [[1.0, 2.0]], "score": [None], "version": [None],
      "text": [["x"]]}],
    [{"names": ["a"], "numeric": [[1.0]], "score": [None, 0.5], "version": [None]}],
    [{"names": ["a"], "numeric": [[1.0]], "score": [None], "version": True}],
], ids=["text-columns", "score-rows", "version-not-a-list"])
def test_model_state_restore_rejects_inconsistent_pending_rows(pending: list[Any]) -> None:
    """restore used to load pending rows of inconsistent shapes: build_reference failed later."""
    from driftline.detectors.errors import SnapshotError
    from driftline.streams.model_state import ModelState

    c = fuzz.corpus()
    try:
        st = ModelState.restore(_state_blob(pending=pending), c.monitor_reference, c.monitor_config)
    except SnapshotError:
        return
    st.build_reference(bins=8)


@pytest.mark.parametrize("name, value", [
    ("LOG_LEVEL", "bogus"), ("PANE_SECONDS", "-1"), ("PANE_SECONDS", "nan"),
    ("TARGET_RUN_LENGTH", "inf"), ("PANE_SIZE", str(2**63)), ("COOLDOWN", str(10**30)),
    ("BOOTSTRAP_SERVERS", " "), ("IDLE_TIMEOUT_S", "nan"), ("IDLE_TIMEOUT_S", "-1"),
])
def test_settings_reject_values_the_worker_cannot_use(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Settings used to pass values the worker fails on later (monitor_config(), kafka(),
    logging) instead of raising a ValidationError naming the variable."""
    from pydantic import ValidationError

    from driftline.streams.settings import Settings

    monkeypatch.setenv(f"DRIFTLINE_{name}", value)
    with pytest.raises(ValidationError):
        fuzz._derive(Settings())


def test_auto_reference_keeps_at_most_max_features_columns() -> None:
    """max_features used to hold per decode call only: an auto-reference took the union of the
    buffered batches' names (N x max_features columns and metric series)."""
    from prometheus_client import CollectorRegistry

    from driftline.schemas.limits import Limits
    from driftline.streams.metrics import WorkerMetrics
    from driftline.streams.processor import Incoming, Processor

    proc = Processor(config=fuzz.small_monitor_config(), limits=Limits(max_features=20),
                     metrics=WorkerMetrics(CollectorRegistry()), auto_reference_events=100)
    off = 0
    for b in range(10):  # ten polls, each with events carrying 20 new feature names
        msgs = [Incoming("t", 0, off + i, orjson.dumps(
            {"model": "m", "features": {f"f{b}_{i}_{j}": float(j) for j in range(20)}}))
            for i in range(10)]
        off += len(msgs)
        proc.process(msgs)  # the first event of each poll is applied (20 new names each)
    proc.process([Incoming("t", 0, off + i, orjson.dumps({"model": "m", "features": {"f0_0_1": 1.0}}))
                  for i in range(100)])  # completes the first 100 events: the reference
    ref = proc.references["m"]
    assert len(ref.columns) <= 20, len(ref.columns)


def test_forgetting_a_model_removes_all_its_series() -> None:
    """forget_model used to leave a revoked model's requests/alerts/references-built series."""
    from prometheus_client import CollectorRegistry, generate_latest

    from driftline.streams.metrics import WorkerMetrics

    registry = CollectorRegistry()
    m = WorkerMetrics(registry)
    m.requests.labels("gone", "ok").inc()
    m.alerts.labels("gone", "data", "firing").inc()
    m.references_built.labels("gone", "first-events").inc()
    m.events.labels("gone").inc()
    m.forget_model("gone")
    assert 'model="gone"' not in generate_latest(registry).decode()


def test_snapshot_arrays_of_the_wrong_type_or_impossible_shape_are_refused() -> None:
    """A pane table of floats where counts belong is refused (a cast would turn NaN into
    arbitrary counts), and a dimension past int64 is refused before numpy sees it."""
    import warnings

    import numpy as np

    from driftline.detectors.errors import SnapshotError
    from driftline.detectors.serialization import pack, unpack
    from driftline.detectors.windows import CountRule, PaneRing

    ring = PaneRing(2, CountRule(3), {"hist": ((2, 4), "<i8")})
    ring.add(0, {"hist": np.ones((2, 4), dtype=np.int64)}, 3, np.zeros(3),
             np.arange(3, dtype=np.int64), 2)
    ring.close(0)
    meta, arrays = ring.state()
    fresh = PaneRing(2, CountRule(3), {"hist": ((2, 4), "<i8")})
    fresh.load(meta, arrays)
    assert fresh.totals["hist"].tolist() == ring.totals["hist"].tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad = {**arrays, "closed.hist": np.full(arrays["closed.hist"].shape, np.nan)}
        with pytest.raises(ValueError, match="wrong type"):
            PaneRing(2, CountRule(3), {"hist": ((2, 4), "<i8")}).load(meta, bad)
        blob = pack("driftline.test", {}, {"a": np.zeros((0, 3), dtype=np.int64)})
        hacked = blob.replace(b"[0,3]", b"[0,18446744073709551615]")
        assert hacked != blob
        with pytest.raises(SnapshotError):
            unpack(hacked, "driftline.test")

"""The overhead benchmark feeds every setting the same events in every form."""

from __future__ import annotations

import numpy as np
import orjson

from driftline.benchmarks.overhead import FORMS, _labels_for, _Stream, messages_per_batch
from driftline.schemas.codecs import decode_inference


def _decoded(stream: _Stream, form: str, shadow: bool) -> dict[str, tuple[object, ...]]:
    kind, per_message = FORMS[form]
    values = [v for vs, _ in stream.batches(kind, shadow, per_message, messages_per_batch(kind))
              for v in vs]
    out = decode_inference(values)
    assert not out.rejections
    return {m: (b.numeric.tolist(), b.event_id.tolist(), b.segment.tolist(),
                b.prediction_score.tolist(),
                None if b.shadow_of is None else b.shadow_of.tolist())
            for m, b in out.batches.items()}


def test_forms_decode_to_the_same_events_and_shadow_only_adds_shadow_of() -> None:
    s = _Stream(30, seed=3)
    rows = _decoded(s, "envelope rows", False)
    assert len(rows) == 12 and all(len(v[1]) == 30 for v in rows.values())
    assert _decoded(s, "envelope columns", False) == rows
    assert _decoded(s, "envelope packed", False) == rows
    assert _decoded(s, "single events", False) == rows
    shadowed = _decoded(s, "envelope rows", True)
    for m, v in shadowed.items():
        assert v[:4] == rows[m][:4]
        assert v[4] == ([m.removesuffix("-candidate")] * 30 if m.endswith("-candidate") else None)
    cand = shadowed["model-0-candidate"]
    assert cand[1] == rows["model-0"][1]  # the candidate answers the live model's events
    assert np.abs(np.subtract(cand[3], rows["model-0"][3])).max() < 0.2


def test_labels_name_events_of_the_live_models() -> None:
    s = _Stream(40, seed=3)
    labels = s.labels(0.5)
    batches = s.batches("rows", False, 500, 10)
    vals, parts = _labels_for([v for vs, _ in batches for v in vs], labels)
    ids = [eid for m in s.live for eid in (ev["event_id"] for ev in s.events[m])]
    assert 0.3 * len(ids) < len(vals) < 0.7 * len(ids)
    assert len(parts) == len(vals)
    named = [orjson.loads(v)["event_id"] for v in vals]
    assert len(set(named)) == len(named) and set(named) <= set(ids)  # one label per event

"""The README's metric list against what a worker's registry exports: every family is
listed, and every name listed is a family the worker exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from driftline.streams.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Metrics"):text.index("## Reliability")]
    return set(re.findall(r"`(driftline_[a-z0-9_]+)", section))


def _exported() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    out = set()
    for family in registry.collect():
        out.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return out


def test_every_exported_family_is_listed_and_every_listed_name_is_exported() -> None:
    exported, listed = _exported(), _listed()
    assert len(exported) > 30
    assert exported - listed == set()
    assert listed - exported == set()

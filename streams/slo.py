"""SLO spec -> Prometheus rules: multi-window, multi-burn-rate alerts (Sloth/Pyrra pattern).

Spec (YAML)::

    version: 1                        # optional; only 1 exists
    slos:
      - name: model-3-availability    # unique; letters, digits, "_", "-", "."; the `slo` label
        model: model-3                # value of the `model` label of driftline's metrics
        objective: 99.9               # percent good, 0 < objective < 100
        period: 30d                   # optional, error-budget period (default 30d)
        description: Fraud model answers  # optional, copied into the alert annotations
        labels: {team: fraud}         # optional, extra labels on every alert
        sli:
          type: availability          # see the SLI types below

SLI types (each yields an error ratio, 0..1, over a window W):

``{type: availability}``
    predictions with ``outcome="error"`` among those with ``ok|error``
    (``driftline_serving_requests_total``; ``unknown`` outcomes are left out).
``{type: latency, threshold_ms: 50}``
    predictions slower than ``threshold_ms``, from the ``driftline_serving_latency_seconds``
    histogram. ``threshold_ms`` must be one of its bucket bounds (``buckets_ms``, default the
    worker's buckets), else the SLI would silently have no data: the spec is rejected.
``{type: freshness, max_age_seconds: 300}``
    share of time (1-minute resolution) during which the model's newest drift evaluation
    (``driftline_worker_last_evaluation_timestamp_seconds``, newest over workers) is older
    than ``max_age_seconds``. While no worker exports the gauge (worker down, model not
    tracked yet) the SLI has no data: the DriftlineWorkerDown / DriftlineWorkerNotEvaluating
    alerts cover that case.
``{type: label_coverage, delay_seconds: 3600, metric: driftline_labels_joined_total}``
    events without a joined ground-truth label: 1 - labels joined / events applied
    (``driftline_worker_events_total``) ``delay_seconds`` earlier, since labels arrive late.
    ``metric`` names the counter of joined labels (per ``model``).

Rendered rules, per SLO (labels ``slo``, ``model``, ``sli`` on every series):

* ``slo:sli_error:ratio_rate<W>`` for W in 5m, 30m, 1h, 2h, 6h, 1d, 3d;
* ``slo:objective:ratio``, ``slo:error_budget:ratio`` (1 - objective),
  ``slo:current_burn_rate:ratio`` (5m error ratio / budget),
  ``slo:period_error_ratio:ratio`` and ``slo:error_budget_remaining:ratio``
  (1 - period error ratio / budget; below 0 once the budget of ``period`` is spent);
* alert ``DriftlineSLOBurnRatePage`` (severity critical): 14.4x budget burn over 1h and 5m,
  or 6x over 6h and 30m; alert ``DriftlineSLOBurnRateTicket`` (severity warning): 3x over
  1d and 2h, or 1x over 3d and 6h (Google SRE workbook, "Alerting on SLOs").

``render_yaml(load_spec(path))`` is a rule file for Prometheus ``rule_files`` (check it with
``promtool check rules``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "BURN_RATE_ALERTS",
    "DEFAULT_LATENCY_BUCKETS_MS",
    "WINDOWS",
    "SloSpec",
    "SloSpecError",
    "load_spec",
    "render_rules",
    "render_yaml",
]

#: Error-ratio windows recorded for every SLO.
WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

#: (alert, severity, [(burn-rate factor, long window, short window), ...])
BURN_RATE_ALERTS: tuple[tuple[str, str, tuple[tuple[float, str, str], ...]], ...] = (
    ("DriftlineSLOBurnRatePage", "critical", ((14.4, "1h", "5m"), (6.0, "6h", "30m"))),
    ("DriftlineSLOBurnRateTicket", "warning", ((3.0, "1d", "2h"), (1.0, "3d", "6h"))),
)

#: Buckets of the worker's ``driftline_serving_latency_seconds`` histogram, in ms.
DEFAULT_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_DURATION = re.compile(r"^[1-9][0-9]*[mhdw]$")
_RESERVED_LABELS = frozenset({"slo", "model", "sli", "severity", "alertname", "__name__"})


class SloSpecError(ValueError):
    """The SLO spec file is missing, not YAML, or not valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AvailabilitySli(_Strict):
    """Error predictions among predictions with a known outcome."""

    type: Literal["availability"]


class LatencySli(_Strict):
    """Predictions slower than ``threshold_ms`` (a histogram bucket bound)."""

    type: Literal["latency"]
    threshold_ms: float = Field(gt=0)
    buckets_ms: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS_MS

    @model_validator(mode="after")
    def _threshold_is_a_bucket(self) -> LatencySli:
        if not any(abs(self.threshold_ms - b) <= 1e-9 * b for b in self.buckets_ms):
            bounds = ", ".join(f"{b:g}" for b in self.buckets_ms)
            raise ValueError(
                f"threshold_ms {self.threshold_ms:g} is not a bucket bound of "
                f"driftline_serving_latency_seconds ({bounds} ms): pick one of those, or set "
                "buckets_ms to the buckets your workers export"
            )
        return self


class FreshnessSli(_Strict):
    """Time during which the newest drift evaluation is older than ``max_age_seconds``."""

    type: Literal["freshness"]
    max_age_seconds: float = Field(gt=0)


class LabelCoverageSli(_Strict):
    """Events that got no ground-truth label ``delay_seconds`` later."""

    type: Literal["label_coverage"]
    delay_seconds: int = Field(default=0, ge=0)
    metric: str = "driftline_labels_joined_total"

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        if not _METRIC.match(v):
            raise ValueError(f"{v!r} is not a Prometheus metric name")
        return v


Sli = Annotated[
    AvailabilitySli | LatencySli | FreshnessSli | LabelCoverageSli, Field(discriminator="type")
]


class Slo(_Strict):
    """One service-level objective of one model."""

    name: str
    model: str = Field(min_length=1, max_length=256)
    objective: float = Field(gt=0, lt=100, description="percent good")
    period: str = "30d"
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    sli: Sli

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                "name must start with a letter or digit and hold only letters, digits, "
                "'_', '-', '.' (at most 128 characters)"
            )
        return v

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        if not _DURATION.match(v):
            raise ValueError("period must be a duration like 30d, 4w or 720h")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _LABEL.match(key) or key.startswith("__"):
                raise ValueError(f"{key!r} is not a valid label name")
            if key in _RESERVED_LABELS:
                raise ValueError(f"label {key!r} is set by driftline; choose another name")
        return v

    @property
    def error_budget(self) -> float:
        """Allowed error ratio, 1 - objective."""
        return round(1.0 - self.objective / 100.0, 12)


class SloSpec(_Strict):
    """A validated SLO spec file."""

    version: Literal[1] = 1
    slos: tuple[Slo, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SloSpec:
        seen: set[str] = set()
        for slo in self.slos:
            if slo.name in seen:
                raise ValueError(f"SLO name {slo.name!r} is used twice")
            seen.add(slo.name)
        return self


def load_spec(path: str | Path) -> SloSpec:
    """Read and validate an SLO spec; raise :class:`SloSpecError` with every problem found."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SloSpecError(f"{p}: cannot read the SLO spec: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SloSpecError(f"{p}: not valid YAML: {exc}") from exc
    return parse_spec(data, source=str(p))


def parse_spec(data: Any, source: str = "<spec>") -> SloSpec:
    """Validate an already-parsed spec (a mapping with ``slos``)."""
    if not isinstance(data, dict):
        raise SloSpecError(f"{source}: the spec must be a mapping with a 'slos' list")
    try:
        return SloSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise SloSpecError(f"{source}: invalid SLO spec:\n" + "\n".join(lines)) from exc


# ---------------------------------------------------------------- rendering


def _q(value: str) -> str:
    """A PromQL double-quoted string literal."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def _le_regex(threshold_s: float) -> str:
    """``le`` values the bound may carry: client format (``1.0``) and normalised (``1``)."""
    forms = {repr(float(threshold_s))}
    if float(threshold_s).is_integer():
        forms.add(str(int(threshold_s)))
    return "|".join(re.escape(f) for f in sorted(forms))


def sli_error_ratio(slo: Slo, window: str) -> str:
    """PromQL for the SLO's error ratio over ``window``."""
    m = _q(slo.model)
    sli = slo.sli
    if isinstance(sli, AvailabilitySli):
        return (
            f'(sum(rate(driftline_serving_requests_total{{model={m},outcome="error"}}[{window}]))'
            " or vector(0))\n/\n"
            f'sum(rate(driftline_serving_requests_total{{model={m},outcome=~"ok|error"}}'
            f"[{window}]))"
        )
    if isinstance(sli, LatencySli):
        le = _q(_le_regex(sli.threshold_ms / 1000.0))
        return (
            "1 - (\n"
            f"  sum(rate(driftline_serving_latency_seconds_bucket{{model={m},le=~{le}}}"
            f"[{window}]))\n  /\n"
            f"  sum(rate(driftline_serving_latency_seconds_count{{model={m}}}[{window}]))\n)"
        )
    if isinstance(sli, FreshnessSli):
        return (
            "avg_over_time((\n"
            f"  (time() - max(driftline_worker_last_evaluation_timestamp_seconds{{model={m}}}))"
            f" > bool {_num(sli.max_age_seconds)}\n)[{window}:1m])"
        )
    assert isinstance(sli, LabelCoverageSli)
    offset = f" offset {sli.delay_seconds}s" if sli.delay_seconds else ""
    return (
        "1 - clamp_max(\n"
        f"  (sum(rate({sli.metric}{{model={m}}}[{window}])) or vector(0))\n  /\n"
        f"  sum(rate(driftline_worker_events_total{{model={m}}}[{window}]{offset})),\n  1\n)"
    )


def _slo_labels(slo: Slo) -> dict[str, str]:
    return {"slo": slo.name, "model": slo.model, "sli": slo.sli.type}


def _selector(slo: Slo) -> str:
    return f"{{slo={_q(slo.name)}}}"


def _burn_expr(slo: Slo, pairs: tuple[tuple[float, str, str], ...]) -> str:
    sel = _selector(slo)
    parts = []
    for factor, long_w, short_w in pairs:
        thr = _num(round(factor * slo.error_budget, 12))
        parts.append(
            f"(\n  slo:sli_error:ratio_rate{long_w}{sel} > {thr}\n"
            f"  and\n  slo:sli_error:ratio_rate{short_w}{sel} > {thr}\n)"
        )
    return "\nor\n".join(parts)


def _slo_groups(slo: Slo) -> list[dict[str, Any]]:
    labels = _slo_labels(slo)
    sel = _selector(slo)
    budget = _num(slo.error_budget)
    sli_rules = [
        {"record": f"slo:sli_error:ratio_rate{w}", "expr": sli_error_ratio(slo, w),
         "labels": dict(labels)}
        for w in WINDOWS
    ]
    meta_rules = [
        {"record": "slo:objective:ratio", "expr": f"vector({_num(round(slo.objective / 100.0, 12))})",
         "labels": dict(labels)},
        {"record": "slo:error_budget:ratio", "expr": f"vector({budget})", "labels": dict(labels)},
        {"record": "slo:current_burn_rate:ratio",
         "expr": f"slo:sli_error:ratio_rate5m{sel} / {budget}", "labels": dict(labels)},
        {"record": "slo:period_error_ratio:ratio",
         "expr": f"avg_over_time(slo:sli_error:ratio_rate5m{sel}[{slo.period}])",
         "labels": dict(labels)},
        {"record": "slo:error_budget_remaining:ratio",
         "expr": f"1 - slo:period_error_ratio:ratio{sel} / {budget}", "labels": dict(labels)},
    ]
    what = slo.description or f"{slo.sli.type} of model {slo.model}"
    alert_rules = []
    for alert, severity, pairs in BURN_RATE_ALERTS:
        windows = ", or ".join(f"{f:g}x over {lw} and {sw}" for f, lw, sw in pairs)
        alert_rules.append({
            "alert": alert,
            "expr": _burn_expr(slo, pairs),
            "labels": {**slo.labels, **labels, "severity": severity},
            "annotations": {
                "summary": (f"SLO {slo.name} ({_num(slo.objective)}%) is burning its error "
                            "budget too fast"),
                "description": (
                    f"{what}: the error budget ({budget}) burns faster than {windows}. "
                    f"Current burn rate: slo:current_burn_rate:ratio{sel}; budget left "
                    f"over {slo.period}: slo:error_budget_remaining:ratio{sel}."
                ),
            },
        })
    base = f"driftline-slo-{slo.name}"
    return [
        {"name": f"{base}-sli", "rules": sli_rules},
        {"name": f"{base}-meta", "rules": meta_rules},
        {"name": f"{base}-alerts", "rules": alert_rules},
    ]


def render_rules(spec: SloSpec) -> dict[str, Any]:
    """The rule file as a mapping: ``{"groups": [...]}``, three groups per SLO."""
    groups: list[dict[str, Any]] = []
    for slo in spec.slos:
        groups.extend(_slo_groups(slo))
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # yaml may be untyped here
    """SafeDumper writing multi-line strings (PromQL) as literal blocks."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def render_yaml(spec: SloSpec) -> str:
    """The rule file as YAML text, ready for Prometheus ``rule_files``."""
    header = (
        "# Generated by `driftline slo render` from an SLO spec: do not edit by hand.\n"
        "# Multi-window, multi-burn-rate alerts (SRE workbook): page at 14.4x (1h & 5m) or\n"
        "# 6x (6h & 30m) budget burn, ticket at 3x (1d & 2h) or 1x (3d & 6h).\n"
    )
    body = yaml.dump(render_rules(spec), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)
    return header + str(body)

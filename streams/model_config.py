"""Per-model window and alerting configuration, read from a small YAML (or JSON) file.

::

    defaults:                 # every model not listed below (over the global settings)
      pane_events: 1000       # count windows: panes of N events ...
      panes: 5                # ... and N panes per window
      min_samples: 1000
    models:
      checkout-ranker:        # event-time windows: a 1 h window of 5 min panes
        window: 1h
        pane: 5m
        allowed_lateness: 30s
        late_policy: deadletter   # or current: apply late events to the newest pane
        idle_timeout: 10m
        min_samples: 200
        target_run_length: 1e6
        correction: bh
        fire_m: 2
        fire_n: 3

Durations are numbers of seconds or strings such as ``30s``, ``5m``, ``1h``, ``1d``.
A model entry inherits from ``defaults``, which inherits from the global settings.
Any mistake (unknown key, bad duration, a window that is not a whole number of panes)
is a :class:`ModelConfigError` naming the file and the offending entry.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.policy import PolicyConfig

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min|m|h|d)?\s*$")
MAX_MODELS = 10_000


class ModelConfigError(ValueError):
    """A model configuration file that cannot be used."""


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like ``30s``, ``5m``, ``1.5h``, ``1d``."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"not a duration (use e.g. 30s, 5m, 1h): {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and >= 0: {value!r}")
    return seconds


class WindowSpec(BaseModel):
    """One entry (``defaults`` or a model): every field optional, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pane_events: int | None = Field(default=None, ge=1, le=10_000_000)
    panes: int | None = Field(default=None, ge=1, le=10_000)
    window: float | None = None  # event-time window (seconds)
    pane: float | None = None  # event-time pane (seconds)
    allowed_lateness: float | None = None
    late_policy: Literal["deadletter", "current"] | None = None
    idle_timeout: float | None = None
    min_samples: int | None = Field(default=None, ge=1, le=2**40)
    target_run_length: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    correction: Literal["bonferroni", "bh"] | None = None
    fire_m: int | None = Field(default=None, ge=1, le=1000)
    fire_n: int | None = Field(default=None, ge=1, le=1000)
    clear_after: int | None = Field(default=None, ge=1, le=1000)
    cooldown: int | None = Field(default=None, ge=0, le=1000)

    @field_validator("window", "pane", "allowed_lateness", "idle_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _consistent(self) -> WindowSpec:
        if self.pane_events is not None and (self.pane is not None or self.window is not None):
            raise ValueError("pane_events (count windows) and window/pane (event-time windows) "
                             "exclude each other")
        if (self.window is None) != (self.pane is None):
            raise ValueError("event-time windows need both window and pane")
        if self.pane is not None and self.window is not None:
            if self.pane <= 0:
                raise ValueError("pane must be > 0")
            k = self.window / self.pane
            if abs(k - round(k)) > 1e-9 * k or round(k) < 1:
                raise ValueError(f"window ({self.window:g} s) must be a whole number of panes "
                                 f"({self.pane:g} s)")
            if self.panes is not None and self.panes != round(k):
                raise ValueError("panes contradicts window / pane")
        if self.fire_m is not None and self.fire_n is not None and self.fire_m > self.fire_n:
            raise ValueError("need fire_m <= fire_n")
        return self

    def over(self, base: WindowSpec) -> WindowSpec:
        """This entry with the fields it leaves unset taken from ``base``.

        A count entry (``pane_events``) over an event-time base, or the reverse, drops
        the base's other window kind.
        """
        mine = self.model_dump(exclude_none=True)
        merged = base.model_dump(exclude_none=True)
        if "pane_events" in mine:
            merged.pop("window", None), merged.pop("pane", None)
        if "pane" in mine:
            merged.pop("pane_events", None)
            merged.pop("panes", None)
        merged.update(mine)
        return WindowSpec(**merged)


class ConfigFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: WindowSpec = Field(default_factory=WindowSpec)
    models: dict[str, WindowSpec] = Field(default_factory=dict, max_length=MAX_MODELS)


@dataclass(frozen=True)
class Effective:
    """What one model runs with."""

    monitor: MonitorConfig
    idle_timeout: float | None


@dataclass(frozen=True)
class ModelConfigs:
    """Per-model configuration resolved over a base (global settings) config."""

    base: MonitorConfig = field(default_factory=MonitorConfig)
    base_idle_timeout: float | None = None
    file: ConfigFile = field(default_factory=ConfigFile)
    source: str = "<settings>"

    def __post_init__(self) -> None:
        # resolve every entry once, so a bad combination fails at load time, not mid-stream
        cache: dict[str | None, Effective] = {None: self._resolve(self.file.defaults, None)}
        for name, spec in self.file.models.items():
            try:
                merged = spec.over(self.file.defaults)
            except ValidationError as exc:
                raise ModelConfigError(f"{self.source}: models.{name}: {_errors(exc)}") from None
            cache[name] = self._resolve(merged, name)
        object.__setattr__(self, "_cache", cache)

    def for_model(self, model: str) -> Effective:
        cache: dict[str | None, Effective] = self.__dict__["_cache"]
        return cache.get(model) or cache[None]

    def monitor_config(self, model: str) -> MonitorConfig:
        return self.for_model(model).monitor

    def idle_timeout(self, model: str) -> float | None:
        return self.for_model(model).idle_timeout

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.file.models)

    def with_model(self, model: str, entry: WindowSpec) -> ModelConfigs:
        """A copy in which ``entry`` replaces the model's entry (it still inherits the
        defaults). Raises ModelConfigError when the combination is invalid."""
        models = {**self.file.models, model: entry}
        if len(models) > MAX_MODELS:
            raise ModelConfigError(f"{self.source}: more than {MAX_MODELS} model entries")
        file = self.file.model_copy(update={"models": models})
        return ModelConfigs(self.base, self.base_idle_timeout, file, self.source)

    def _resolve(self, spec: WindowSpec, name: str | None) -> Effective:
        b = self.base
        pol = b.policy
        changes: dict[str, Any] = {}
        if spec.pane_events is not None:
            changes.update(pane_size=spec.pane_events, pane_seconds=None)
        if spec.pane is not None and spec.window is not None:
            changes.update(pane_seconds=spec.pane, panes=round(spec.window / spec.pane))
        elif spec.panes is not None:
            changes["panes"] = spec.panes
        for key, attr in (("allowed_lateness", "allowed_lateness"), ("late_policy", "late_policy"),
                          ("min_samples", "min_samples"),
                          ("target_run_length", "target_run_length"),
                          ("correction", "correction")):
            v = getattr(spec, key)
            if v is not None:
                changes[attr] = v
        fire_m = spec.fire_m or pol.fire_m
        fire_n = spec.fire_n or max(pol.fire_n, fire_m)
        try:
            policy = PolicyConfig(fire_m, fire_n,
                                  spec.clear_after if spec.clear_after is not None
                                  else pol.clear_after,
                                  spec.cooldown if spec.cooldown is not None else pol.cooldown)
            cfg = MonitorConfig(**{**b.to_dict(), "policy": policy, **changes})
        except (TypeError, ValueError) as exc:
            where = "defaults" if name is None else f"models.{name}"
            raise ModelConfigError(f"{self.source}: {where}: {exc}") from None
        idle = spec.idle_timeout if spec.idle_timeout is not None else self.base_idle_timeout
        return Effective(cfg, idle if idle else None)


def load_model_configs(path: str | Path | None, base: MonitorConfig,
                       base_idle_timeout: float | None = None) -> ModelConfigs:
    """Read and validate a model configuration file (YAML or JSON); None: settings only."""
    if path is None:
        return ModelConfigs(base, base_idle_timeout)
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ModelConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return parse_model_configs(text, base, base_idle_timeout, source=str(p),
                               json=p.suffix.lower() == ".json")


def parse_model_configs(text: bytes | str, base: MonitorConfig,
                        base_idle_timeout: float | None = None, *, source: str = "<config>",
                        json: bool = False) -> ModelConfigs:
    """Validate a model configuration document."""
    try:
        raw = orjson.loads(text) if json else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{source}: not valid {'JSON' if json else 'YAML'}: {exc}") \
            from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{source}: expected a mapping with 'defaults' and 'models'")
    try:
        file = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ModelConfigError(f"{source}: {_errors(exc)}") from None
    return ModelConfigs(base, base_idle_timeout, file, source)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '(top level)'}: {e['msg']}"
                     for e in exc.errors())


# -- a model's entry on the references topic ---------------------------------------------
RECORD_SCHEMA = "driftline.model-config/v1"


def record_key(model: str) -> bytes:
    """References-topic key of a model's configuration (its profile is keyed by the bare
    model id; the NUL keeps the two apart under compaction)."""
    return b"config\x00" + model.encode()


def encode_record(model: str, entry: WindowSpec) -> bytes:
    """A model's configuration entry as a references-topic record."""
    return orjson.dumps({"schema": RECORD_SCHEMA, "model": model,
                         "config": entry.model_dump(exclude_none=True)})


def decode_record(value: bytes) -> tuple[str, WindowSpec] | None:
    """``(model, entry)`` of a configuration record; None when the value is something
    else (a reference profile). Raises ModelConfigError for a malformed record."""
    if b'"driftline.model-config/v1"' not in value[:512]:
        return None
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ModelConfigError(f"model config record: not JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("schema") != RECORD_SCHEMA:
        return None
    model = d.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= 256:
        raise ModelConfigError("model config record: 'model' must be a string of 1..256 chars")
    try:
        return model, WindowSpec.model_validate(d.get("config") or {})
    except ValidationError as exc:
        raise ModelConfigError(f"model config record for {model}: {_errors(exc)}") from None

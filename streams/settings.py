"""One frozen settings object, read from ``DRIFTLINE_*`` environment variables.

Built once (CLI or caller) and passed down; nothing reads the environment elsewhere.
Kafka security settings pass through to every client driftline creates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftline.detectors.concept import ConceptConfig, ConceptRule, model_rules
from driftline.detectors.label_join import JoinConfig
from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.policy import PolicyConfig
from driftline.detectors.quality import QualityConfig
from driftline.detectors.shadow import ShadowConfig
from driftline.schemas.limits import Limits

if TYPE_CHECKING:
    from driftline.streams.labels import LabelSetup
    from driftline.streams.model_config import ModelConfigs


class Settings(BaseSettings):
    """driftline's configuration (env prefix ``DRIFTLINE_``)."""

    # populate_by_name: Settings(model_config_file=...) by its name, while the environment
    # is read through the field's DRIFTLINE_ aliases only (never a bare MODEL_CONFIG_FILE)
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "driftline"
    client_id: str = "driftline"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_oauthbearer_config: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None

    # topics
    inference_topic: str = "driftline.inference"
    labels_topic: str = "driftline.labels"
    references_topic: str = "driftline.references"
    alerts_topic: str = "driftline.alerts"
    deadletter_topic: str = "driftline.deadletter"
    changes_topic: str = "driftline.changes"
    state_topic: str = "driftline.state"
    status_topic: str = "driftline.status"
    partitions: int = Field(8, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1)

    # worker
    batch_max_messages: int = Field(2000, ge=1)
    # bytes of messages per batch, about: each consume asks for this over an estimate of
    # the largest message (see batch_size.py), so a backlog of envelopes is not held
    # 2,000 at a time
    batch_max_bytes: int = Field(16_777_216, ge=1024)
    batch_timeout_s: float = Field(0.1, gt=0)
    # decode inference messages in a child process, one batch ahead of the detectors
    # (a second core per worker, same results); "auto": when the worker may use 2 CPUs.
    # Off by default: where workers already keep every core busy it costs throughput
    decode_process: Literal["auto", "on", "off"] = "off"
    snapshot_interval_s: float = Field(2.0, ge=0)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9464, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    snapshot_key: SecretStr | None = None  # HMAC key for snapshots/references
    runtime: Literal["kafka", "faust"] = "kafka"  # worker runtime (streams/faust_app.py)
    faust_web_port: int | None = Field(None, ge=0, le=65535)  # Faust's web server; None: off
    # local files of the worker (reference records; the Faust runtime's data directory);
    # "": a private temporary directory. The worker makes its own subdirectory here and
    # removes only that at shutdown.
    data_dir: str = ""

    # references
    auto_reference_events: int = Field(5000, ge=100)
    reference_bins: int = Field(16, ge=2, le=256)

    # windows and calibration (defaults for every model)
    panes: int = Field(5, ge=1)
    pane_size: int = Field(1000, ge=1)
    pane_seconds: float | None = Field(None, gt=0, allow_inf_nan=False)
    allowed_lateness_s: float = Field(0.0, ge=0)
    late_policy: Literal["deadletter", "current"] = "deadletter"
    idle_timeout_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    min_samples: int = Field(1000, ge=1)
    target_run_length: float = Field(1e6, gt=0)
    correction: Literal["bonferroni", "bh"] = "bonferroni"
    fire_m: int = Field(1, ge=1)
    fire_n: int = Field(1, ge=1)
    clear_after: int = Field(3, ge=1)
    cooldown: int = Field(0, ge=0)
    #: the reference's multivariate statistics (RFF kernel MMD, covariance, PCA
    #: reconstruction) beside the per-column tests; ``off`` runs the per-column tests only
    multivariate: bool = True

    # segments: drift per segment value as well as per model
    segments: bool = True  # DRIFTLINE_SEGMENTS=false turns per-segment windows off
    segment_max: int = Field(16, ge=1, le=1000)  # values with their own window; rest pooled
    segment_keys: str = ""  # comma-separated keys forming the segment value; "" = all keys
    #: YAML/JSON file of per-model windows over the defaults above (see model_config.py)
    model_config_file: str | None = Field(
        None, validation_alias=AliasChoices("DRIFTLINE_MODEL_CONFIG", "DRIFTLINE_MODEL_CONFIG_FILE"))

    # data quality (kind "quality") and confidence spikes (kind "prediction")
    quality_enabled: bool = True
    quality_min_increase: float = Field(0.02, ge=0, le=1)  # absolute floor over the reference rate
    quality_range_tolerance: float = Field(0.05, ge=0, le=1e6, allow_inf_nan=False)
    confidence_enabled: bool = True
    confidence_threshold: float = Field(0.9, ge=0, le=1)
    confidence_min_increase: float = Field(0.05, ge=0, le=1)
    confidence_baseline_events: int = Field(5000, ge=1, le=2**40)

    # shadow mode (kind "shadow")
    shadow_tolerance: float = Field(0.05, ge=0, le=1e12, allow_inf_nan=False)  # scores agree within
    shadow_min_agreement: float = Field(0.95, ge=0, le=1)
    shadow_min_pairs: int = Field(1000, ge=1, le=2**40)
    shadow_pane_pairs: int = Field(500, ge=1, le=2**40)
    shadow_panes: int = Field(4, ge=1, le=2**20)
    shadow_ttl_s: float = Field(300.0, ge=0, le=1e12, allow_inf_nan=False)
    shadow_max_pending: int = Field(10_000, ge=1, le=2**40)
    shadow_max_candidates: int = Field(8, ge=1, le=2**20)
    shadow_clear_after: int = Field(3, ge=1, le=2**30)

    # labels and concept drift (see README "Labels and concept drift")
    label_join: Literal["auto", "all", "off"] = "auto"  # which models keep their predictions
    # event time a prediction waits for its label
    label_ttl_seconds: float = Field(86_400.0, gt=0, allow_inf_nan=False)
    label_join_max: int = Field(100_000, ge=1, le=10_000_000)  # predictions kept per model
    label_pending_max: int = Field(10_000, ge=1, le=1_000_000)  # labels waiting for a prediction
    concept_task: Literal["binary", "multiclass"] = "binary"
    concept_positive_label: str = Field("1", min_length=1)
    concept_score_threshold: float = Field(0.5, allow_inf_nan=False)
    concept_metric: Literal["accuracy", "fpr", "fnr", "error_rate"] = "error_rate"
    concept_threshold: float | None = Field(None, ge=0, le=1)  # None: no rule unless per model
    concept_window: int = Field(10_000, ge=1, le=10_000_000)
    concept_min_labelled: int = Field(1_000, ge=1)
    concept_eval_every: int = Field(500, ge=1)
    concept_detector: Literal["adwin", "ddm", "none"] = "adwin"
    # per-model rules: "fraud=fpr > 0.05 over 10000; churn=accuracy < 0.9"
    concept_rules: str = ""

    # limits
    max_payload_bytes: int = Field(1_048_576, ge=64)
    max_features: int = Field(512, ge=1)
    max_string_length: int = Field(1024, ge=1)
    max_events_per_envelope: int = Field(100_000, ge=1)
    max_models: int = Field(1000, ge=1)
    # event and label times this far ahead of the worker's clock (or before 1970) are
    # dead-lettered: one would move a watermark past every real event for good
    max_future_s: float = Field(86_400.0, gt=0)

    @model_validator(mode="after")
    def _usable(self) -> Settings:
        """Refuse, at startup and naming the variable, values the worker would fail on later
        (pane_seconds <= 0, non-finite numbers, integers the detectors refuse, an unknown
        log level, blank bootstrap servers, invalid concept rules): pydantic turns these
        ValueErrors into a ValidationError."""
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"log_level {self.log_level!r} is not a logging level")
        self.monitor_config()
        self.kafka()
        self.label_setup()  # the concept rules and bounds must make a valid setup
        return self

    def monitor_config(self) -> MonitorConfig:
        return MonitorConfig(
            panes=self.panes,
            pane_size=self.pane_size,
            pane_seconds=self.pane_seconds,
            allowed_lateness=self.allowed_lateness_s,
            late_policy=self.late_policy,
            min_samples=self.min_samples,
            target_run_length=self.target_run_length,
            correction=self.correction,
            policy=PolicyConfig(self.fire_m, max(self.fire_n, self.fire_m), self.clear_after,
                                self.cooldown),
            multivariate=self.multivariate,
            segments=self.segments,
            segment_max=self.segment_max,
            segment_keys=tuple(k.strip() for k in self.segment_keys.split(",") if k.strip()),
            quality=QualityConfig(
                enabled=self.quality_enabled, min_increase=self.quality_min_increase,
                range_tolerance=self.quality_range_tolerance, confidence=self.confidence_enabled,
                confidence_threshold=self.confidence_threshold,
                confidence_min_increase=self.confidence_min_increase,
                confidence_baseline_events=self.confidence_baseline_events),
        )

    def shadow_config(self) -> ShadowConfig:
        return ShadowConfig(
            tolerance=self.shadow_tolerance, min_agreement=self.shadow_min_agreement,
            min_pairs=self.shadow_min_pairs, pane_pairs=self.shadow_pane_pairs,
            panes=self.shadow_panes, ttl_s=self.shadow_ttl_s,
            max_pending=self.shadow_max_pending, max_candidates=self.shadow_max_candidates,
            clear_after=self.shadow_clear_after,
        )

    def model_configs(self) -> ModelConfigs:
        """Per-model configuration: the model config file over :meth:`monitor_config`.

        Raises ModelConfigError when the file is unreadable or invalid.
        """
        from driftline.streams.model_config import load_model_configs

        return load_model_configs(self.model_config_file, self.monitor_config(),
                                  self.idle_timeout_s)
    def label_setup(self) -> LabelSetup:
        """Join bounds and concept configs (the per-model rules are checked here)."""
        from driftline.streams.labels import LabelSetup

        mon = self.monitor_config()
        rule = (None if self.concept_threshold is None
                else ConceptRule.default_for(self.concept_metric, self.concept_threshold))
        base = ConceptConfig(
            task=self.concept_task, positive_label=self.concept_positive_label,
            score_threshold=self.concept_score_threshold, window=self.concept_window,
            min_labelled=min(self.concept_min_labelled, self.concept_window),
            eval_every=self.concept_eval_every, rule=rule, detector=self.concept_detector,
            policy=mon.policy)
        return LabelSetup(
            join=JoinConfig(self.label_ttl_seconds, self.label_join_max, self.label_pending_max),
            concept=base,
            rules={m: base.with_rule(r) for m, r in model_rules(self.concept_rules).items()},
            keep=self.label_join)

    def signing_key(self) -> bytes | None:
        """The HMAC key of snapshots and reference records (None: records are unsigned)."""
        return self.snapshot_key.get_secret_value().encode() if self.snapshot_key else None

    def limits(self) -> Limits:
        return Limits(
            max_payload_bytes=self.max_payload_bytes,
            max_features=self.max_features,
            max_string_length=self.max_string_length,
            max_events_per_envelope=self.max_events_per_envelope,
        )

    def kafka(self) -> dict[str, str]:
        """Base librdkafka configuration, security included (secrets unwrapped here only)."""
        from driftline.streams.kafka_config import client_config

        def secret(s: SecretStr | None) -> str | None:
            return s.get_secret_value() if s is not None else None

        return client_config(
            self.bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=secret(self.sasl_password),
            sasl_oauthbearer_config=secret(self.sasl_oauthbearer_config),
            ssl_cafile=self.ssl_cafile,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            ssl_key_password=secret(self.ssl_key_password),
        )

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated)."""
        return Settings.model_validate({**self.model_dump(), **changes})


#: ``DRIFTLINE_*`` variables of the tests, benchmarks, CI and examples (not settings)
_TOOLING = ("DRIFTLINE_TEST_", "DRIFTLINE_BENCH_", "DRIFTLINE_CI_", "DRIFTLINE_EXAMPLE_")


def setting_variables() -> frozenset[str]:
    """Every environment variable a setting is read from (upper case)."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        names.update(str(c).upper() for c in choices)
        if not choices:
            names.add(f"DRIFTLINE_{name.upper()}")
    return frozenset(names)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``DRIFTLINE_*`` names in ``environ`` that no setting reads, sorted: a misspelt
    setting is otherwise ignored without a word (names are matched case-insensitively,
    as the settings read them)."""
    known = setting_variables()
    return sorted(k for k in environ if (u := k.upper()).startswith("DRIFTLINE_")
                  and u not in known and not u.startswith(_TOOLING))

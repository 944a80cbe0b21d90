"""One frozen settings object, read from ``DRIFTLINE_*`` environment variables.

Built once (CLI or caller) and passed down; nothing reads the environment elsewhere.
Kafka security settings pass through to every client driftline creates.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftline.detectors.monitor import MonitorConfig
from driftline.detectors.policy import PolicyConfig
from driftline.schemas.limits import Limits

if TYPE_CHECKING:
    from driftline.streams.model_config import ModelConfigs


class Settings(BaseSettings):
    """driftline's configuration (env prefix ``DRIFTLINE_``)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", frozen=True, extra="ignore")

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
    batch_timeout_s: float = Field(0.1, gt=0)
    snapshot_interval_s: float = Field(2.0, ge=0)
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9464, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    snapshot_key: SecretStr | None = None  # HMAC key for snapshots/references

    # references
    auto_reference_events: int = Field(5000, ge=100)
    reference_bins: int = Field(16, ge=2, le=256)

    # windows and calibration (defaults for every model)
    panes: int = Field(5, ge=1)
    pane_size: int = Field(1000, ge=1)
    pane_seconds: float | None = None
    allowed_lateness_s: float = Field(0.0, ge=0)
    late_policy: Literal["deadletter", "current"] = "deadletter"
    idle_timeout_s: float | None = None
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
        None, validation_alias=AliasChoices("model_config_file", "DRIFTLINE_MODEL_CONFIG",
                                            "DRIFTLINE_MODEL_CONFIG_FILE"))

    # limits
    max_payload_bytes: int = Field(1_048_576, ge=64)
    max_features: int = Field(512, ge=1)
    max_string_length: int = Field(1024, ge=1)
    max_events_per_envelope: int = Field(100_000, ge=1)
    max_models: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _usable(self) -> Settings:
        """Refuse, at startup and naming the variable, values the worker would fail on later
        (pane_seconds <= 0, non-finite numbers, integers the detectors refuse, an unknown
        log level, blank bootstrap servers): pydantic turns these ValueErrors into a
        ValidationError."""
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"log_level {self.log_level!r} is not a logging level")
        self.monitor_config()
        self.kafka()
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
        )

    def model_configs(self) -> ModelConfigs:
        """Per-model configuration: the model config file over :meth:`monitor_config`.

        Raises ModelConfigError when the file is unreadable or invalid.
        """
        from driftline.streams.model_config import load_model_configs

        return load_model_configs(self.model_config_file, self.monitor_config(),
                                  self.idle_timeout_s)

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

"""Input limits of the decoders and the bounded set of dead-letter reason codes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Past any of these an input is rejected with a reason, never silently dropped.

    The JSON Schema files encode the defaults (except the payload size, which a
    schema cannot express); the decoders take the configured values.
    """

    max_payload_bytes: int = 1_048_576
    max_features: int = 512  # per event, and distinct per model within one decode call
    max_feature_name_length: int = 128
    max_string_length: int = 1024  # string feature values, ids, labels, segment keys/values
    max_events_per_envelope: int = 100_000
    max_segment_keys: int = 16
    max_model_id_length: int = 256


DEFAULT_LIMITS = Limits()

#: Bounded set of reason codes: the ``code`` of a ``"code: detail"`` reason and a metric label.
REASON_CODES: frozenset[str] = frozenset(
    {
        "invalid_json",
        "not_object",
        "schema",
        "payload_too_large",
        "too_many_features",
        "string_too_long",
        "too_many_events",
        "unknown_envelope",
        "too_many_models",
        "detector_error",
        "late",
        "too_many_segments",
        "ts_out_of_range",
    }
)

#: Dead letters carry at most this many bytes of the original payload.
DEAD_LETTER_PAYLOAD_MAX = 64 * 1024

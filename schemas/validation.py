"""Load the shipped JSON Schema files and build cached validators (non-hot-path use).

The validators are Draft 2020-12 with two driftline refinements that keep them in
exact agreement with the Python decoders:

* ``"number"`` means a finite IEEE double: NaN, ±Infinity (which Python's ``json``
  accepts) and integers beyond the float64 range are not numbers.
* ``"format": "date-time"`` is asserted with :func:`parse_iso_ts`, the parser the
  decoders use (ISO-8601 date or date-time, ``Z`` or ``±HH:MM`` offset, naive = UTC).
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.validators import extend

#: ISO-8601 timestamps the decoders accept (also the ``pattern`` in the schema files).
ISO_TS_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
_ISO_RE = re.compile(ISO_TS_PATTERN[1:-1])

SCHEMA_NAMES = (
    "inference_event.v1",
    "batch_envelope.v1",
    "label_event.v1",
    "reference_profile.v1",
    "drift_alert.v1",
    "dead_letter.v1",
    "change_event.v1",
)
_SUFFIX = ".schema.json"


def parse_iso_ts(text: str) -> float:
    """ISO-8601 date/date-time -> epoch seconds; naive times are UTC. Raises ValueError."""
    if not _ISO_RE.fullmatch(text):
        raise ValueError(f"not an ISO-8601 timestamp: {text[:64]!r}")
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    except OverflowError:
        raise ValueError(f"timestamp out of range: {text[:64]!r}") from None


def _file_name(name: str) -> str:
    base = name.removesuffix(_SUFFIX)
    if base not in SCHEMA_NAMES:
        base = f"{base}.v1"
    if base not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return base + _SUFFIX


def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file, by name (``"inference_event.v1"``, ``"inference_event"``
    or the file name). Raises KeyError for an unknown name."""
    path = resources.files("driftline.schemas").joinpath("json", _file_name(name))
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _is_number(checker: Any, instance: object) -> bool:
    if isinstance(instance, bool):
        return False
    if isinstance(instance, float):
        return math.isfinite(instance)
    if isinstance(instance, int):
        return -sys.float_info.max <= instance <= sys.float_info.max
    return False


def _is_integer(checker: Any, instance: object) -> bool:
    if isinstance(instance, float):
        return math.isfinite(instance) and instance.is_integer()
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_number, "integer": _is_integer}
    ),
)


def _check_date_time(instance: object) -> bool:
    if isinstance(instance, str):
        parse_iso_ts(instance)
    return True


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    checker.checks("date-time", raises=ValueError)(_check_date_time)
    return checker


@cache
def validator(name: str) -> Any:
    """A cached Draft 2020-12 validator of one schema (``.is_valid``, ``.iter_errors``...)."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return _Validator(schema, format_checker=_format_checker())


def first_error(name: str, instance: object) -> str | None:
    """The most relevant validation error of ``instance`` as one line, or None when valid.

    A value nested too deeply to validate (or to render in a message) is an error too.
    """
    from jsonschema.exceptions import best_match

    try:
        err = best_match(validator(name).iter_errors(instance))
        if err is None:
            return None
        where = "/".join(str(p) for p in err.absolute_path)
        return f"{where or '<root>'}: {err.message}"[:300]
    except RecursionError:
        return "<root>: a value is nested too deeply to validate"

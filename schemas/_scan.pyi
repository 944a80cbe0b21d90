"""Compiled scanner of single InferenceEvents (schemas/_scan.c)."""

from typing import Any

def scan(
    values: tuple[Any, ...], partitions: Any, offsets: Any, stamps: Any, max_bytes: int,
    max_string: int, max_model: int, /
) -> tuple[bytes, list[tuple[Any, ...] | None], list[bytes]]: ...

"""Checks of command-line values that typer's types do not make (exit 2 with the reason)."""

from __future__ import annotations

import math
from pathlib import Path

import typer


def significance(value: float) -> float:
    """A family-wise significance level: a number strictly between 0 and 1."""
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value} is not a significance level (between 0 and 1)")
    return value


def output_file(value: Path | None) -> Path | None:
    """A file to write at the end (``-``: stdout): refused before any work when its
    directory does not exist or it names a directory."""
    if value is None or str(value) == "-":
        return value
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory")
    parent = value.parent if str(value.parent) else Path(".")
    if not parent.is_dir():
        raise typer.BadParameter(f"{parent} is no directory")
    return value

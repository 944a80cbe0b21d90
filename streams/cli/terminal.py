"""Data-derived text for the terminal: shown literally, never as Rich markup or as control
sequences (model, feature and owner names come from topics anyone with write access fills,
or from the column names of a user's file)."""

from __future__ import annotations

from rich.markup import escape


def shown(value: object) -> str:
    """``value`` as text Rich prints as is: markup escaped, control and other
    non-printable characters (ESC, bidi overrides...) written as ``\\x1b``-style escapes."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return escape(text)

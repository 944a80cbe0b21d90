"""Errors the detection engine raises; the stream layer turns them into dead letters."""


class DriftlineError(Exception):
    """Base class of driftline's own errors."""


class SnapshotError(DriftlineError):
    """Snapshot bytes that cannot be restored (corrupt, wrong kind, bad signature)."""


class ProfileError(DriftlineError):
    """A reference profile that cannot be built or used."""


class InputError(DriftlineError, ValueError):
    """Input a detector cannot use (wrong shape, wrong type)."""

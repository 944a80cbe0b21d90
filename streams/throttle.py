"""Log at most once per period: a flood of one kind of error must not flood the log."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class LogThrottle:
    """:meth:`ready` is True at most once per ``period`` seconds (the first call is)."""

    def __init__(self, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._last = -math.inf

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last < self.period:
            return False
        self._last = now
        return True

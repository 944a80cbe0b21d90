"""Log at most once per period: a flood of one kind of error must not flood the log."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any


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


class ThrottledLog:
    """A sink for librdkafka's ``logger`` setting, which calls ``log(level, fmt, *args)``
    with the facility, the client's name and the message as ``args``. Lines below
    WARNING pass as they come; warnings and errors of one facility pass at most once per
    ``period`` seconds, with how many were held back since (a client whose broker is down
    logs every reconnect attempt, several a second)."""

    #: facilities tracked one by one (librdkafka's are a small fixed set); others share one
    MAX_FACILITIES = 64

    def __init__(self, logger: logging.Logger, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.period = period
        self._clock = clock
        self._throttles: dict[str, LogThrottle] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, msg: str, *args: Any) -> None:
        if level < logging.WARNING:
            self.logger.log(level, msg, *args)
            return
        fac = str(args[0]) if args else ""
        if fac not in self._throttles and len(self._throttles) >= self.MAX_FACILITIES:
            fac = "*"
        throttle = self._throttles.get(fac)
        if throttle is None:
            throttle = self._throttles[fac] = LogThrottle(self.period, self._clock)
        if not throttle.ready():
            self._held[fac] = self._held.get(fac, 0) + 1
            return
        held = self._held.pop(fac, 0)
        if held:
            msg, args = f"{msg} (%d more like it in the last %.0f s)", (*args, held, self.period)
        self.logger.log(level, msg, *args)

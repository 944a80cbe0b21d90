"""Alert policy: M-of-N hysteresis, resolve after a quiet streak, cooldown, min sample size."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PolicyConfig:
    """When a stream of per-evaluation drift decisions becomes a firing or resolved alert."""

    fire_m: int = 1  # fire when at least m ...
    fire_n: int = 1  # ... of the last n evaluations drifted
    clear_after: int = 3  # resolve after this many consecutive quiet evaluations
    cooldown: int = 0  # evaluations after a resolve during which it cannot fire again

    def __post_init__(self) -> None:
        for name in ("fire_m", "fire_n", "clear_after", "cooldown"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
                raise ValueError(f"{name} must be an integer, not {v!r}")
        if not 1 <= self.fire_m <= self.fire_n:
            raise ValueError("need 1 <= fire_m <= fire_n")
        if self.clear_after < 1 or self.cooldown < 0:
            raise ValueError("clear_after must be >= 1 and cooldown >= 0")


@dataclass
class AlertState:
    """Hysteresis state of one alert key (kind + segment)."""

    history: deque[bool] = field(default_factory=deque)
    firing: bool = False
    quiet: int = 0
    cooldown: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"h": [int(b) for b in self.history], "f": self.firing, "q": self.quiet,
                "c": self.cooldown}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertState:
        q, c = d["q"], d["c"]
        for v in (q, c):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
                raise ValueError(f"bad alert state counter {v!r}")
        if not isinstance(d["h"], list):
            raise ValueError("alert history must be a list")
        return cls(deque(bool(b) for b in d["h"]), bool(d["f"]), q, c)


class AlertPolicy:
    """Turns drift decisions into transitions: ``"firing"``, ``"resolved"`` or ``None``."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._reset()

    def _reset(self) -> None:
        self.states: dict[str, AlertState] = {}

    def step(self, key: str, drifted: bool) -> str | None:
        """Record one sufficient evaluation of ``key``; return the transition, if any."""
        cfg = self.config
        st = self.states.setdefault(key, AlertState())
        st.history.append(drifted)
        while len(st.history) > cfg.fire_n:
            st.history.popleft()
        if st.firing:
            st.quiet = 0 if drifted else st.quiet + 1
            if st.quiet >= cfg.clear_after:
                st.firing, st.quiet, st.cooldown = False, 0, cfg.cooldown
                st.history.clear()
                return "resolved"
            return None
        if st.cooldown > 0:
            st.cooldown -= 1
            return None
        if sum(st.history) >= cfg.fire_m:
            st.firing, st.quiet = True, 0
            return "firing"
        return None

    def firing(self, key: str) -> bool:
        st = self.states.get(key)
        return bool(st and st.firing)

    def to_dict(self) -> dict[str, Any]:
        return {k: s.to_dict() for k, s in self.states.items()}

    def load(self, d: dict[str, Any]) -> None:
        self.states = {str(k): AlertState.from_dict(v) for k, v in d.items()}

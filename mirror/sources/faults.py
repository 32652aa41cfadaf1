"""Fault injection: which misbehaviour, if any, the next request gets.

One spec language for every source's sandbox (``--faults``): a comma list of ``kind=rate``
pairs, e.g. ``500=0.05,502=0.01,503=0.01,429=0.02,reset=0.02,truncate=0.02,slow=0.01``,
plus ``retry_after=SECONDS`` (sent with 429, default 1), ``slow_seconds=S`` (default 0.5)
and ``match=TEXT`` to limit faults to request paths containing TEXT (``match=/download``;
in the ISIC v2 sandbox ``match=/images/`` hits both the API listing and the bucket's files).
Draws come from an RNG seeded with the sandbox seed and the request's sequence number, so a
run's fault pattern is reproducible.

429s model a proxy in front of the archive (the ISIC v2 server never rate-limits itself),
which clients such as isic-cli retry.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

KINDS = ("500", "502", "503", "429", "reset", "truncate", "slow")


@dataclass
class FaultPlan:
    rates: dict[str, float] = field(default_factory=dict)
    retry_after: float = 1.0
    slow_seconds: float = 0.5
    match: str = ""
    seed: int = 0
    _sequence: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0) -> FaultPlan:
        plan = cls(seed=seed)
        for part in filter(None, (p.strip() for p in (spec or "").split(","))):
            key, _, value = part.partition("=")
            if key == "match":
                plan.match = value
                continue
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"bad fault {part!r}: expected kind=rate") from None
            if key == "retry_after":
                plan.retry_after = number
            elif key == "slow_seconds":
                plan.slow_seconds = number
            elif key in KINDS and 0 <= number <= 1:
                plan.rates[key] = number
            else:
                raise ValueError(f"bad fault {part!r}: kinds are {', '.join(KINDS)} "
                                 "with a rate in 0..1, or retry_after/slow_seconds/match")
        if sum(plan.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        return plan

    def draw(self, path: str = "") -> str | None:
        """The fault for the next request to ``path``, or None."""
        if not self.rates or self.match not in path:
            return None
        with self._lock:
            self._sequence += 1
            roll = random.Random(f"{self.seed}:{self._sequence}").random()
        for kind in KINDS:
            rate = self.rates.get(kind, 0.0)
            if roll < rate:
                return kind
            roll -= rate
        return None

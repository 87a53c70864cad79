"""When asynchronous refreshes fall due: Atlas's `refresh_index` schedule strings."""

from __future__ import annotations

import re


class Schedule:
    """When refreshes fall due, as Atlas's `refresh_index` strings.

    "0-100:10,100-:500" means every 10 steps in [0, 100), then every 500 steps from 100 on.
    Each range is "start-end:every" with end exclusive and optional; a step is due when it
    lies in a range and (step - start) is a multiple of that range's `every`. Ranges may not
    overlap. An empty string or "none" never falls due.
    """

    _RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d*)\s*:\s*(\d+)\s*$")

    def __init__(self, spec: str):
        if not isinstance(spec, str):
            raise TypeError(f"schedule must be a string like '0-100:10,100-:500', got {type(spec).__name__}")
        self.spec = spec
        ranges = []
        if spec.strip().lower() not in ("", "none"):
            for part in spec.split(","):
                m = self._RANGE.match(part)
                if m is None:
                    raise ValueError(
                        f"bad schedule range {part.strip()!r} in {spec!r}; expected 'start-end:every' or 'start-:every'"
                    )
                start, end, every = int(m[1]), int(m[2]) if m[2] else None, int(m[3])
                if every < 1:
                    raise ValueError(f"schedule range {part.strip()!r}: every must be >= 1")
                if end is not None and end <= start:
                    raise ValueError(f"schedule range {part.strip()!r}: end must be > start")
                ranges.append((start, end, every))
        ranges.sort()
        for (s0, e0, _), (s1, _, _) in zip(ranges, ranges[1:]):
            if e0 is None or e0 > s1:
                raise ValueError(f"schedule {spec!r}: ranges starting at {s0} and {s1} overlap")
        self.ranges = tuple(ranges)

    def due(self, step: int) -> bool:
        for start, end, every in self.ranges:
            if start <= step and (end is None or step < end):
                return (step - start) % every == 0
        return False

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r})"

"""A running job's progress, folded from its worker's events: the recipe step (i of n) and the
task inside it (percent, loss, ETA)."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class Progress:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def apply(self, event: dict[str, Any]) -> bool:
        """Fold one event in; True when the recipe step changed (worth storing at once)."""
        kind = event.get("type")
        if kind == "step":
            index, count = _number(event.get("index")), _number(event.get("count"))
            self.data = {
                "step": str(event.get("step", "")), "state": str(event.get("state", "")),
                "step_index": int(index) + 1 if index is not None else 0,  # the worker's is 0-based
                "step_count": int(count) if count is not None else 0,
            }
            return True
        if kind == "progress":
            done, total = _number(event.get("done")), _number(event.get("total"))
            self.data["task"] = str(event.get("task", ""))
            self.data["percent"] = (round(100.0 * min(done, total) / total, 1)
                                    if done is not None and total else 0.0)
            for key in ("loss", "eta_s"):
                value = _number(event.get(key))
                if value is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = value
        return False

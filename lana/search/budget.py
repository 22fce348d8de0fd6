"""A bound on a summed cost (``latency_ms<=5.0``), parsed without numpy or scipy.

:mod:`lana.search.solver` solves with budgets; they live here so that validating a config's
``search.extra_budgets`` loads neither the solver nor torch.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from lana.errors import ConfigError


def is_real(x: Any) -> bool:
    """Whether ``x`` is a real number (an int, a float, a numpy scalar...), not a bool."""
    # Exact-type fast path: validation touches every op of ~10k, and the ABC check is slow.
    t = type(x)
    if t is float or t is int:
        return True
    # bool is an int subclass, but a score of True is certainly a bug in the producer.
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# "@" allows column names such as latency_ms@torch or latency_ms@onnxruntime@b32.
_BUDGET_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-@]*)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Budget:
    """A bound on a summed cost: ``key <= value`` (e.g. latency) or ``key >= value``."""

    key: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError(f"budget key must be a non-empty string, got {self.key!r}")
        if self.op not in ("<=", ">="):
            raise ConfigError(f"budget operator must be '<=' or '>=', got {self.op!r}")
        if not is_real(self.value) or not math.isfinite(self.value):
            raise ConfigError(f"budget {self.key}{self.op} needs a finite number, got "
                              f"{self.value!r}")
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``"latency_ms<=5.0"``, ``"params <= 2e6"`` or ``"flops>=1e6"``."""
        if isinstance(text, Budget):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"a budget must be text like 'latency_ms<=5.0', got {text!r}")
        m = _BUDGET_RE.match(text)
        if m is None:
            hint = ""
            if re.search(r"[<>=]", text) and not re.search(r"<=|>=", text):
                hint = " (only '<=' and '>=' are supported)"
            raise ConfigError(
                f"cannot parse budget {text!r}{hint}; write KEY<=VALUE or KEY>=VALUE, "
                "e.g. 'latency_ms<=5.0' or 'params <= 2e6'"
            )
        key, op, num = m.groups()
        try:
            value = float(num)
        except ValueError:
            raise ConfigError(
                f"cannot parse budget {text!r}: {num!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ConfigError(f"budget {text!r} needs a finite value, got {num!r}")
        return cls(key=key, op=op, value=value)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value!r}"

    def satisfied_by(self, total: float) -> bool:
        """Whether a summed cost meets this budget."""
        return total <= self.value if self.op == "<=" else total >= self.value

"""`setting()`: a recipe field with its help text and, for a number, its valid range.

Every section of the recipe (`trainer.config.*`) declares its fields with `setting`, so that a field's
default, help and range stand on one line; `check_range` is how loading (`trainer.config.loading`)
enforces the range before anything loads.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any

from trainer.errors import ConfigError


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a help text and, for a number, its valid range (checked by
    `trainer.config.loading` before anything loads; None is always allowed where the type allows
    it). Mutable defaults go through a factory."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "range": bounds} if bounds else {"help": help}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata=metadata)
    return field(default=default, metadata=metadata)


_BOUND_TEXT = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise ConfigError when a number is outside the field's declared range (see `setting`)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bounds = f.metadata.get("range", {})
    broken = [k for k, b in bounds.items() if not _BOUND_OK[k](value, b)]
    if broken:
        valid = " and ".join(f"{_BOUND_TEXT[k]} {bounds[k]}" for k in bounds)
        raise ConfigError(f"config key '{key}' must be {valid}, got {value!r}.")

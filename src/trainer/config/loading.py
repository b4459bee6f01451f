"""Recipe YAML and `--set a.b=value` overrides to a validated `RunConfig`, and back (`to_dict`).

Each value is checked against its field's annotation and range; an unknown key stops with its name
and the closest valid one, before any model or dataset is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.config.fields import check_range
from trainer.config.run import RunConfig
from trainer.errors import ConfigError


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


class _NotFinite(ConfigError):
    """A number of the right type that no setting takes (inf, nan)."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dicts to dataclasses)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}.")
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except _NotFinite:
                raise  # the type fits: say what is wrong with the value, not with its type
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}.")
        _, varg = typing.get_args(tp)
        squeezed = [str(k) for k, v in value.items() if v is None and ":" in str(k)]
        if squeezed:  # YAML reads {prompt:question} (no space after the colon) as one key with no value
            name, _, column = squeezed[0].partition(":")
            raise ConfigError(
                f"config key '{key}': '{squeezed[0]}' needs a space after the colon ({{{name}: {column}}}); "
                f"on the command line set one entry at a time: {key}.{name}={column}."
            )
        return {str(k): _coerce(v, varg, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `2e-4` (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # YAML reads .inf and .nan: no setting means either (an infinite learning rate trained
            # until the non-finite guard stopped it; a NaN reward weight poisons every advantage).
            if not math.isfinite(number):
                raise _NotFinite(f"config key '{key}' must be a finite number, got {value!r}.")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}."
            if ":" in str(key):  # YAML read `{name:gsm8k}` (the shell ate the quotes) as one key
                hint += (
                    " In a mapping written inline, quote the keys or put a space after each colon; through make,"
                    f" wrap SET in single quotes: {WHOLE_VALUE}."
                )
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            check_range(f, kwargs[f.name], prefix + f.name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A list of mappings that survives make's SET, which splits at every space (README, Makefile help).
WHOLE_VALUE = """SET='eval.datasets=[{"name":gsm8k,"path":data/eval/gsm8k_test.jsonl,"answer_format":gsm8k}]'"""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values are YAML scalars or lists. A value that
    is not YAML is taken as text, except one that opens a list or mapping and does not close it: a
    value cut at a space, as make's SET cuts `eval.datasets=[{name: a, path: b}]` into
    `eval.datasets=[{name:`, `a,`, ... (an unquoted shell argument likewise). Raises ConfigError,
    naming the form that works."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. --set grpo.max_steps=10).")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            if raw.lstrip()[:1] in ("[", "{"):
                raise ConfigError(
                    f"--set '{item}' is not a whole value: make's SET splits at every space. Write the value "
                    f"without spaces, keys in double quotes, SET in single quotes: {WHOLE_VALUE} "
                    "(without make: quote the whole --set argument)."
                ) from None
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe, apply `key=value` overrides, and validate it. Raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pick one of configs/*.yaml.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError(f"config file {where} is not valid YAML: {getattr(e, 'problem', e)}.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}.")
    data = _merge(data, parse_overrides(overrides or []))
    return _build(RunConfig, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)

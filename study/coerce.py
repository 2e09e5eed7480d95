"""Values of the config file and of flags, as the settings' types want them: type coercion with
one-line errors, memory sizes, and dotted-key overrides. Knows no setting by name."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from study.errors import UserError

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """A memory size such as ``256MB``, ``2GB``, ``1.5GiB`` or ``1000000`` in bytes (binary units:
    1 MB = 1024² bytes). Raises UserError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"memory_budget={text!r} is invalid; use a size such as 256MB, 2GB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def coerce(value: Any, hint: Any, key: str, wrong_type: str = "") -> Any:
    """Check ``value`` against a simple type hint (str, int, float, bool, list[...]) and convert
    text (from a flag) to it; ``wrong_type`` is added to the error, e.g. what a valid value looks like."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return coerce(value, option, key, wrong_type)
            except UserError:
                pass
        raise UserError(f"{key}={value!r} has the wrong type; expected {hint}")
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise UserError(f'{key}={value!r} must be a table of keys, e.g. {{ resnet18 = "ResNet-18" }}')
        return {str(k): coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # "0.1,0.25" from the CLI or a hand-written file
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={value!r} must be a list")
        return [coerce(v, item, key, wrong_type) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    kind = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
    raise UserError(f"{key}={value!r} is not {kind}" + (f"; {wrong_type}" if wrong_type else ""))


def known_keys(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        k: known_keys(hints[k], v) if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) else v
        for k, v in raw.items()
        if k in hints
    }


def overridden(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``raw`` with dotted-key ``overrides`` applied; None values are ignored."""
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return raw


def from_dict(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(prefix + k for k in fields)}"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if hasattr(item, "from_table"):  # [[arms]], [[datasets]]: tables of their own grammar
            values[name] = [item.from_table(table) for table in value]
        elif dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            values[name] = coerce(
                value, hint, f"{prefix}{name}", getattr(fields[name].metadata.get("setting"), "wrong_type", "")
            )
    return cls(**values)

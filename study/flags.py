"""The command line's setting flags, derived from the declarations (``study/settings.py``).

A declared setting with a flag gets it on the commands its scope names (``settings.SCOPES``,
plus the declaration's ``also``); the flag stores its text under the dotted key, and the config
loader coerces and checks it like a value of the config file, with the same one-line errors.
"""

from __future__ import annotations

import argparse
from typing import Any

from study.settings import Declared, declared, flag_help


def add_setting_flags(parser: argparse.ArgumentParser, command: str, schema: type) -> None:
    """Add to ``parser`` the flag of every setting of ``schema`` that ``command`` has."""
    for d in declared(schema):
        if d.setting.flag and command in d.setting.commands:
            add_flag(parser, d, command)


def add_flag(parser: argparse.ArgumentParser, d: Declared, command: str = "run") -> None:
    """The flag of one setting, its help ending with the default."""
    meta = d.setting
    names = (meta.flag, *meta.aliases)
    common: dict[str, Any] = {"dest": d.dest, "help": flag_help(d, command)}
    if meta.kind == "bool":
        parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
    elif meta.kind in ("on", "off"):
        parser.add_argument(*names, action="store_const", const=meta.kind == "on", **common)
    else:
        action = "append" if meta.kind == "append" else "store"
        parser.add_argument(*names, metavar=meta.metavar or d.name.upper(), action=action, **common)


def overrides(args: argparse.Namespace, schema: type, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The settings the flags in ``args`` give, as dotted-key overrides of the config (None where
    a flag was not given); only ``keys`` when named."""
    return {
        d.key: getattr(args, d.dest, None)
        for d in declared(schema)
        if d.setting.flag and (keys is None or d.key in keys)
    }


def command_keys(command: str, schema: type) -> tuple[str, ...]:
    """The dotted keys of the settings whose flags ``command`` has."""
    return tuple(d.key for d in declared(schema) if d.setting.flag and command in d.setting.commands)

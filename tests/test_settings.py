"""Settings are declared once, in ``study/config.py``'s dataclasses; these tests keep what is
derived by hand in step with them: every command-line flag that sets a setting reaches a real
config key (a flag that maps to nothing would be silently ignored), the worker's flags are the
machine's, and ``study init``'s example names every setting."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

import pytest

from study import cli, config

# Flags that steer the command itself rather than set a study or machine setting.
COMMAND_ONLY = {"config", "retry_failed", "no_report", "quiet", "wait", "command", "help"}


def _dests(command: str) -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest for a in sub._actions} - COMMAND_ONLY


def _config_keys(cls: type = config.StudyConfig, prefix: str = "") -> set[str]:
    """Every dotted key of the config, nested sections included."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys |= _config_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


@pytest.mark.parametrize("command", ["run", "worker"])
def test_every_setting_flag_maps_to_a_config_key(command):
    unmapped = _dests(command) - set(cli._OVERRIDES)
    assert not unmapped, f"`study {command}` flags that set nothing: {sorted(unmapped)}"


def test_every_mapping_names_a_real_config_key():
    keys = _config_keys()
    assert not {k for k in cli._OVERRIDES.values() if k not in keys}


def test_worker_flags_are_the_worker_overrides_and_cover_the_machine_keys():
    worker = _dests("worker") - {"name"}  # the study to join, not a setting it overrides
    assert set(cli._WORKER_OVERRIDES) == worker
    assert set(config.MACHINE_KEYS) <= {cli._OVERRIDES[k] for k in cli._WORKER_OVERRIDES}


def test_a_flag_value_reaches_the_config():
    args = cli.build_parser().parse_args(
        ["run", "--budget", "fixed", "--epochs", "7", "--grace-period", "55", "--pruner", "none"]
    )
    cfg = cli._config(args)
    assert (cfg.train.epochs, cfg.grace_period, cfg.tune.pruner) == (7, 55.0, "none")


def test_init_example_names_every_setting():
    """``study init`` writes every setting (commented where it has no useful default)."""
    section, written = "", set()
    for line in config.EXAMPLE_TOML.splitlines():
        text = line.lstrip("# ").strip()
        if match := re.match(r"^\[(\w+)\]", text):
            section = match.group(1)
        elif match := re.match(r"^(\w+)\s*=", text):
            written.add(f"{section}.{match.group(1)}" if section else match.group(1))
    assert written == _config_keys()

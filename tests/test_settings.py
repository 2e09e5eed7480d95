"""Each setting is declared once (``setting()`` on a field of ``study/config.py``'s dataclasses) and
everything else comes from that declaration: its flag on the commands its scope names, its config
key with the type's coercion, ``study init``'s line, the row of docs/configuration.md and the row of
the report's Methods table. These tests prove it for every setting of the study, and for a setting
added to a throw-away schema."""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from study import cli, config, flags, settings
from study.config import StudyConfig, from_dict
from study.errors import UserError
from study.settings import declared, setting

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "worker", "status", "report", "deploy")
# Flags that steer the command itself rather than set a setting.
COMMAND_ONLY = {"config", "retry_failed", "no_report", "quiet", "wait", "targets", "help"}
SETTINGS = declared(StudyConfig)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def _example_lines(text: str) -> dict[str, str]:
    """{dotted key: its line} of an init example, commented lines included."""
    section, lines = "", {}
    for line in text.splitlines():
        if match := re.match(r"^\[(\w+)\]", line):
            section = match.group(1)
        elif match := re.match(r"^(?:# )?(\w+) = ", line):
            lines[f"{section}.{match.group(1)}" if section else match.group(1)] = line
    return lines


def test_every_field_of_the_config_is_a_declared_setting():
    keys = {d.key for d in SETTINGS}
    assert len(keys) == len(SETTINGS) > 60
    assert {"train.epochs", "data.image_size", "tune.trials", "deploy.runs", "sequential.until_ci"} <= keys


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


@pytest.mark.parametrize("d", SETTINGS, ids=lambda d: d.key)
def test_flag_key_init_docs_and_methods_come_from_the_declaration(d, parser):
    meta = d.setting
    # The flag: on exactly the commands its scope (and ``also``) names, with the declared help and default.
    for command in COMMANDS:
        action = _actions(_subparser(parser, command)).get(d.dest)
        if meta.flag and command in meta.commands:
            assert action is not None and meta.flag in action.option_strings
            assert action.help == settings.flag_help(d, command)
            if command == "run" or not meta.also_help:
                assert meta.help.replace("%", "%%") in action.help
        else:
            assert action is None, f"`study {command}` has a flag for {d.key}"
    # The config key: in the config as plain data, with its declared default; the file's value is taken.
    plain = config.to_dict(StudyConfig())
    for part in d.key.split(".")[:-1]:
        plain = plain[part]
    assert plain[d.name] == d.default
    # The init line: the key in its section, its default (or commented example) and its help.
    line = _example_lines(config.EXAMPLE_TOML)[d.key]
    assert line.startswith("# ") == (meta.example is not None)
    assert meta.help.split(":")[0].split("(")[0][:30] in config.EXAMPLE_TOML
    # The docs row and the Methods row.
    assert f"| `{d.key}` |" in settings.docs_table(StudyConfig)
    assert (d.key in settings.methods_keys(StudyConfig)) == meta.in_methods


def test_a_flag_value_reaches_the_config():
    args = cli.build_parser().parse_args(
        ["run", "--budget", "fixed", "--epochs", "7", "--grace-period", "55", "--pruner", "none"]
    )
    cfg = cli._config(args)
    assert (cfg.train.epochs, cfg.grace_period, cfg.tune.pruner) == (7, 55.0, "none")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_a_declared_setting_or_steers_the_command(command, parser):
    keys = {d.key for d in SETTINGS}
    dests = set(_actions(_subparser(parser, command))) - COMMAND_ONLY
    assert dests <= keys, f"`study {command}` flags that set nothing: {sorted(dests - keys)}"


def test_the_worker_takes_this_machines_settings_over_the_stored_ones():
    worker = set(flags.command_keys("worker", StudyConfig))
    assert set(config.MACHINE_KEYS) <= worker
    assert {"data.root", "heartbeat", "grace_period", "channels_last", "storage"} <= worker
    assert not {"train.epochs", "models", "seeds"} & worker


def test_init_example_is_valid_toml_that_gives_the_defaults(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(config.EXAMPLE_TOML)
    tomllib.loads(config.EXAMPLE_TOML)
    assert config.load(path) == StudyConfig()
    assert set(_example_lines(config.EXAMPLE_TOML)) == {d.key for d in SETTINGS}


def test_docs_page_holds_the_current_settings_table():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert settings.docs_table(StudyConfig) in page, (
        "docs/configuration.md's settings table is stale: run `python -m study.docs`"
    )


# -- a throw-away schema: one declaration gives all five ---------------------------------------


@dataclass(frozen=True)
class _Section:
    """A section of the throw-away schema."""

    warmth: float = setting(
        0.5,
        "how warm the runs are",
        "arm",
        flag="--warmth",
        metavar="W",
        unit="degrees",
        check=(lambda v: 0 <= v <= 1, "{key}={value} must lie in [0, 1]"),
    )
    colour: str = setting("red", "the colour of the runs", "study", choices=("red", "blue"))

    def validate(self) -> None:
        settings.check_declared(self, "section.")


@dataclass(frozen=True)
class _Schema:
    """A throw-away top-level schema."""

    name: str = setting("x", "study name", "location", flag="--name")
    workers: int = setting(0, "workers on this machine", "machine", flag="--workers", metavar="N", zero="0 = auto")
    hues: list[str] = setting([], "hues to paint", "study", example='["teal"]', methods=True)
    section: _Section = field(default_factory=_Section)


def test_a_new_setting_gets_its_flag_key_init_line_docs_row_and_methods_row():
    # The flag, on the commands of its scope: arm -> run; machine -> run and worker.
    for command, expected in (("run", {"name", "workers", "section.warmth"}), ("worker", {"name", "workers"})):
        parser = argparse.ArgumentParser()
        flags.add_setting_flags(parser, command, _Schema)
        assert set(_actions(parser)) - {"help"} == expected
    parser = argparse.ArgumentParser()
    flags.add_setting_flags(parser, "run", _Schema)
    warmth = _actions(parser)["section.warmth"]
    assert warmth.help == "how warm the runs are (default: 0.5)" and warmth.metavar == "W"
    assert _actions(parser)["workers"].help == "workers on this machine (default: 0 = auto)"
    # Its config key: the flag's text is coerced to the declared type, the check is the declared one.
    given = flags.overrides(parser.parse_args(["--warmth", "0.25"]), _Schema)
    cfg = from_dict(_Schema, config.overridden({}, given), "")
    assert cfg.section.warmth == 0.25 and cfg.workers == 0
    with pytest.raises(UserError, match=r"^section.warmth='hot' is not a number$"):
        from_dict(_Schema, {"section": {"warmth": "hot"}}, "")
    with pytest.raises(UserError, match=r"^section.warmth=2.0 must lie in \[0, 1\]$"):
        from_dict(_Schema, {"section": {"warmth": 2}}, "").section.validate()
    with pytest.raises(UserError, match=r"^section.colour='green' is unknown; valid: red, blue$"):
        from_dict(_Schema, {"section": {"colour": "green"}}, "").section.validate()
    with pytest.raises(UserError, match="unknown config key 'section.warm'"):
        from_dict(_Schema, {"section": {"warm": 1}}, "")
    # Its init line, its docs row, its Methods row.
    example = settings.example_toml(_Schema)
    assert "[section]\n# A section of the throw-away schema.\nwarmth = 0.5" in example
    assert re.search(r"\nwarmth = 0.5 +# how warm the runs are \(degrees\)\n", example)
    assert re.search(r"\n# hues = \[\"teal\"\] +# hues to paint\n", example)
    assert tomllib.loads(example)["section"] == {"warmth": 0.5, "colour": "red"}
    table = settings.docs_table(_Schema)
    assert "| `section.warmth` | `--warmth` | float | `0.5` | unit: degrees | arm | how warm the runs are |" in table
    assert '| `section.colour` |  | str | `"red"` | red \\| blue | study | the colour of the runs |' in table
    assert settings.methods_keys(_Schema) == ["section.warmth", "hues"]
    rows = settings.methods_rows(_Schema, {"hues": ["teal"], "section": {"warmth": 0.5}}, {"hues": "teal (1)"})
    assert rows == [("section.warmth", "0.5"), ("hues", "teal (1)")]


def test_a_field_without_a_declaration_is_refused():
    @dataclass(frozen=True)
    class Bad:
        plain: int = 3

    with pytest.raises(TypeError, match=r"Bad.plain is not declared with setting\(\)"):
        declared(Bad)

"""Each setting declared once: the declaration and what is derived from it.

A setting is a field of one of the config dataclasses (``study/config.py``) whose default is
``setting(default, help, scope, ...)``: its name and section come from where the field is, its
type from the annotation, and the rest (one help sentence, scope, flag, allowed values or unit,
what 0 means, its check) from the declaration. From it are derived:

- the flags of ``run``, ``worker``, ``report`` and ``deploy`` (``study/flags.py``; which commands
  have a flag follows from the scope);
- the config file's keys, their types, coercion and errors (``study/config_file.py``, from the
  annotations);
- the checks of ``validate()`` (``check_declared``);
- ``python -m study init``'s commented example (``example_toml``);
- the settings table of ``docs/configuration.md`` (``docs_table``, written by ``python -m study.docs``);
- the rows of the report's Methods table (``methods_keys``).

This module knows nothing of the study's own settings: every function takes the schema (the
top-level dataclass), so a test can declare a throw-away one. No torch, no store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from study.errors import UserError

# Which commands have a setting's flag, by scope.
SCOPES = {
    "location": ("run", "worker", "status", "report", "deploy"),  # where the study is stored
    "study": ("run",),  # what the study compares, and how its data are read
    "arm": ("run",),  # how a run trains; an arm may set it for itself
    "machine": ("run", "worker"),  # how this machine works on a study; a worker uses its own
    "report": ("run", "report"),  # what the report shows; changes no result
}
KINDS = ("value", "append", "bool", "on", "off")  # --x V | --x V (repeatable) | --x/--no-x | --x | --no-x

Check = tuple[Callable[[Any], bool], str]  # (predicate, error template with {key} and {value})


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting (the field's metadata): everything but its name, type and default."""

    help: str  # one sentence: what it is, in the words of flags, config file, docs and report alike
    scope: str  # a key of SCOPES
    flag: str | None = None  # "--epochs"; None: set in the config file only
    aliases: tuple[str, ...] = ()  # more names of the flag ("--study" for "--name")
    metavar: str | None = None
    kind: str = "value"  # a member of KINDS: how the flag takes its value
    choices: tuple[str, ...] = ()  # the valid values, checked ("is unknown; valid: ...")
    allowed: str = ""  # what is valid, for help and docs, when ``choices`` does not say it
    unit: str = ""  # "s", "px", "epochs", "MB", ...
    zero: str = ""  # what 0 (or "") means: "0 = auto"
    checks: tuple[Check, ...] = ()  # in order; the first that fails raises UserError
    each: bool = False  # the checks apply to each item of a list
    also: tuple[str, ...] = ()  # further commands with this flag (the worker may relocate the data)
    also_help: str = ""  # the flag's help on those commands, when it differs
    example: str | None = None  # init writes it commented, with this TOML value
    methods: bool | None = None  # a row of the report's Methods table; None: when scope is "arm"
    wrong_type: str = ""  # added to the error when a value has the wrong type: what a valid one looks like

    @property
    def commands(self) -> tuple[str, ...]:
        return SCOPES[self.scope] + self.also

    @property
    def in_methods(self) -> bool:
        return self.scope == "arm" if self.methods is None else self.methods


def setting(
    default: Any, help: str, scope: str, *, check: Check | list[Check] | None = None, **declaration: Any
) -> Any:
    """A dataclass field declaring a setting (``epochs: int = setting(8, "epochs per run", "arm", ...)``)."""
    checks = tuple(check if isinstance(check, list) else [check]) if check else ()
    meta = Setting(help=help, scope=scope, checks=checks, **declaration)
    assert meta.scope in SCOPES and meta.kind in KINDS, meta
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"setting": meta})
    return field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Declared:
    """A setting as declared: its dotted key, type and default, and its declaration."""

    key: str  # "train.epochs"
    name: str  # "epochs"
    section: str  # "train"; "" at the top level
    type: Any
    default: Any
    setting: Setting

    @property
    def dest(self) -> str:
        """The argparse destination of its flag: the dotted key."""
        return self.key

    @property
    def valid(self) -> str:
        """What is valid, in words ("a | b | c", "0 = auto"), for help and docs."""
        return self.setting.allowed or " | ".join(self.setting.choices)


def sections(schema: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(section name, dataclass) of the schema and its nested sections, the top level first."""
    yield prefix, schema
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from sections(hints[f.name], f"{prefix}.{f.name}" if prefix else f.name)


def declared(schema: type) -> list[Declared]:
    """Every setting of ``schema``, section by section in field order. A field that is neither a
    section nor declared with ``setting()`` is an error: nothing may be set without its declaration."""
    out = []
    for section, cls in sections(schema):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            meta = f.metadata.get("setting")
            if meta is None:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            key = f"{section}.{f.name}" if section else f.name
            out.append(Declared(key, f.name, section, hints[f.name], default, meta))
    return out


def by_key(schema: type) -> dict[str, Declared]:
    return {d.key: d for d in declared(schema)}


# -- checks -----------------------------------------------------------------------------------


def check(ok: bool, message: str) -> None:
    """Raise UserError(``message``) unless ``ok``: a check no single declaration holds."""
    if not ok:
        raise UserError(message)


def check_declared(section: Any, prefix: str) -> None:
    """Run the declared checks of one section's own settings (not of nested sections), in field
    order; raise UserError with the first failing check's message."""
    for f in dataclasses.fields(section):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        values = value if meta.each or (meta.choices and isinstance(value, list)) else [value]
        for item in values:
            if meta.choices and item not in meta.choices:
                what = f"{key} choice {item!r}" if isinstance(value, list) else f"{key}={item!r}"
                raise UserError(f"{what} is unknown; valid: {', '.join(meta.choices)}")
            for ok, message in meta.checks:
                if not ok(item):
                    raise UserError(message.format(key=key, value=item))


# -- text derived from a declaration ------------------------------------------------------------


def default_text(d: Declared) -> str:
    """The default as the help and the docs show it: lists joined, booleans on/off, 0 and "" by
    what they mean."""
    value, meta = d.default, d.setting
    if meta.kind == "off":
        return f"{meta.flag.removeprefix('--no-')} on"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return "none" if not value else json.dumps(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "" or (value == 0 and meta.zero):
        return meta.zero or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _unsaid(d: Declared) -> bool:
    """Whether the help leaves out what is valid (the choices, or the declared text)."""
    return bool(d.valid) and not all(word in d.setting.help for word in (d.setting.choices or [d.valid]))


def flag_help(d: Declared, command: str = "run") -> str:
    """A flag's help: the help sentence, what is valid, and the default (argparse's % escaped)."""
    meta = d.setting
    if command != "run" and meta.also_help and command in meta.also:
        text = meta.also_help
    elif meta.kind == "off":
        text = f"turns off: {meta.help}"
    else:
        text = meta.help + (f": {d.valid}" if _unsaid(d) and meta.kind in ("value", "append") else "")
        text += "; repeatable" if meta.kind == "append" else ""
    if "default" not in text:
        text += f" (default: {default_text(d)})"
    return text.replace("%", "%%")


def toml_value(value: Any) -> str:
    """``value`` as TOML (the values settings take: strings, numbers, booleans, lists, tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML for {value!r}")


EXAMPLE_HEAD = """\
# study.toml: configuration of a data-efficiency study.
# Run it with:  python -m study run --config study.toml
# Any value can also be given on the command line, which wins over this file.
# Every setting is here, with its default; a commented one has no default worth writing."""


def _comment(d: Declared) -> str:
    """The help with what is valid, what 0 means and the unit, each where the help does not say it."""
    meta = d.setting
    text = meta.help
    if _unsaid(d):
        text += f": {d.valid}"
    if meta.zero and meta.zero not in text:
        text += f"; {meta.zero}" if "=" in meta.zero else f'; "" = {meta.zero}'
    if meta.unit and meta.unit not in text:
        text += f" ({meta.unit})"
    return text


COLUMN = 30  # where the comments of a section's short lines start
WIDTH = 100


def example_toml(schema: type, head: str = EXAMPLE_HEAD) -> str:
    """``python -m study init``'s commented example: every setting with its default (commented,
    with its example value, where it has none worth writing), its help as the comment: beside a
    short line, above a long one."""
    lines = [head]
    settings = declared(schema)
    for section, cls in sections(schema):
        own = [d for d in settings if d.section == section]
        if not own:
            continue
        lines.append("")
        if section:
            doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", "")
            lines.append(f"[{section}]")
            lines += textwrap.wrap(doc, WIDTH, initial_indent="# ", subsequent_indent="# ")
        for d in own:
            value = d.setting.example if d.setting.example is not None else toml_value(d.default)
            pair = f"# {d.name} = {value}" if d.setting.example is not None else f"{d.name} = {value}"
            comment = _comment(d)
            if len(pair) < COLUMN - 1:
                wrapped = textwrap.wrap(comment, WIDTH - COLUMN - 2)
                lines.append(f"{pair.ljust(COLUMN)}# {wrapped[0]}")
                lines += [f"{'':{COLUMN}}# {rest}" for rest in wrapped[1:]]
            else:
                lines += textwrap.wrap(comment, WIDTH, initial_indent="# ", subsequent_indent="# ")
                lines.append(pair)
    return "\n".join(lines) + "\n"


DOCS_BEGIN = "<!-- settings table: generated by `python -m study.docs` from the declarations in study/config*.py -->"
DOCS_END = "<!-- end of the generated settings table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def docs_table(schema: type) -> str:
    """The settings table of ``docs/configuration.md``: one row per setting, section by section."""
    rows = [
        "| key | flag | type | default | valid | scope | meaning |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in declared(schema):
        meta = d.setting
        flags = ", ".join(f"`{f}`" for f in ((meta.flag, *meta.aliases) if meta.flag else ()))
        kind = getattr(d.type, "__name__", None) if not typing.get_args(d.type) else None
        kind = kind or re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(d.type))  # list[study.config_train.Arm] -> list[Arm]
        valid = "; ".join(t for t in (d.valid, meta.zero, meta.unit and f"unit: {meta.unit}") if t)
        default = "`" + toml_value(d.default) + "`"
        rows.append(
            f"| `{d.key}` | {flags} | {_cell(kind)} | {_cell(default)} | {_cell(valid)} | {meta.scope} | "
            f"{_cell(meta.help)} |"
        )
    return "\n".join([DOCS_BEGIN, "", *rows, "", DOCS_END])


def with_docs_table(page: str, schema: type) -> str:
    """``page`` with its generated settings table replaced by the current one."""
    head, sep, rest = page.partition(DOCS_BEGIN)
    _, sep2, tail = rest.partition(DOCS_END)
    if not (sep and sep2):
        raise ValueError("the page has no generated settings table (its markers are missing)")
    return head + docs_table(schema) + tail


def methods_keys(schema: type) -> list[str]:
    """The keys the report's Methods table lists, in its order: a run's training settings, then
    the study's, sections before top-level keys, by name."""
    rows = [d for d in declared(schema) if d.setting.in_methods]
    return [d.key for d in sorted(rows, key=lambda d: (d.setting.scope != "arm", not d.section, d.key))]


def methods_rows(schema: type, stored: dict[str, Any], shown: dict[str, str]) -> list[tuple[str, str]]:
    """The report's Methods rows (setting, value used) of a stored config: every setting declared
    for Methods that the stored config has, its value as ``shown`` gives it (an 'auto' made
    concrete) or as stored."""
    rows = []
    for key in methods_keys(schema):
        *path, name = key.split(".")
        table = stored
        for part in path:
            table = table.get(part) if isinstance(table, dict) else None
        if key in shown:
            rows.append((key, shown[key]))
        elif isinstance(table, dict) and name in table:
            rows.append((key, str(table[name])))
    return rows

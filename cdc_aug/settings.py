"""Each stage's settings, declared once.

A stage's settings are one dataclass (``RenderSettings``, ``GenerateConfig``, ...) whose
fields are at the same time the command's flags (``--t-in``, also spelt ``--t_in``), the keys
of its ``--config`` file and of its section in an experiment YAML, and the keywords of its
Python API. ``stage_parser`` turns the dataclass into a jsonargparse parser (types, defaults
and help from the fields); ``parse`` reads ``--config`` files under the command line, so a
flag always wins over the file, also when it equals its default; ``--print_config`` prints
the resolved settings as a YAML file that ``--config`` reads back.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from .errors import UserError


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, type: Any = None,
            cli: bool = True, positional: bool = False, nargs: str | None = None, factory=None) -> Any:
    """A dataclass field that is also a flag. ``flag``: its name on the command line when not
    ``--field-name`` (``--in``; ``--no-progress`` for a bool that defaults to true); ``type``: a
    callable that parses the flag's text and the file's value (default: the annotation, parsed
    by jsonargparse); ``cli=False``: recorded in the run's config but not a setting."""
    metadata = {"help": help, "flag": flag, "type": type, "cli": cli, "positional": positional, "nargs": nargs}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None  # required: the command checks it, so the config file may give it


def stage_parser(cls, prog: str, description: str | None = None, types: dict | None = None):
    """The jsonargparse parser of a settings dataclass; ``types`` overrides a field's flag type
    (generate's --t-in takes a comma list, a sweep)."""
    from jsonargparse import ArgumentParser

    hints = typing.get_type_hints(cls)
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", action="append",
                        help="YAML file of settings (keys: the names --print_config shows, e.g. t_in), or a run's "
                             "config.yaml; repeatable; flags on the command line win")
    parser.add_argument("--print_config", nargs="?", const=True, metavar="",
                        help="print the resolved settings as YAML (a --config file) and exit")
    for f in cli_fields(cls):
        md, default = f.metadata, _default(f)
        help_text = md.get("help") or None
        if help_text and default not in (None, "", [], False, True) and "default" not in help_text:
            help_text += f" (default: {default})"
        kind = (types or {}).get(f.name) or md.get("type") or hints[f.name]
        if md.get("positional"):
            parser.add_argument(f.name, nargs=md.get("nargs") or "?", type=str, default=default, help=help_text)
            continue
        flag = flag_of(f)
        names = [flag] + ([flag.replace("-", "_").replace("__", "--")] if "-" in flag[2:] else [])
        if hints[f.name] is bool:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            parser.add_argument(*names, dest=f.name, action=action, help=help_text)
            continue
        if f"--{f.name}" not in names:
            names.append(f"--{f.name}")  # the config key as a flag too: --in_dir
        if md.get("nargs") == "append":  # a repeatable flag: --sweep A --sweep B
            parser.add_argument(*names, dest=f.name, action="append", type=str, default=default, help=help_text)
            continue
        if md.get("nargs") in ("+", "*") and not md.get("type"):
            kind = typing.get_args(hints[f.name])[0]  # --data A B: list[str] -> str per word
        parser.add_argument(*names, dest=f.name, type=kind, nargs=md.get("nargs"), default=default, help=help_text)
    return parser


def one_line(e: Exception) -> str:
    """jsonargparse's messages as one line: 'Parser key "x":\n  Expected a <class 'int'>. Got value: y'
    -> "--x: 'y' is not a valid int"."""
    text = re.sub(r'^Parser key "([^"]+)":\s*', r"--\1: ", str(e).strip())
    text = " ".join(re.sub(r"<class '(\w+)'>", r"\1", text).replace("typing.", "").split())
    m = re.search(r"Expected a Literal\[(.*)\]\. Got value: (.*)$", text)
    if m:
        return text[:m.start()] + f"{m[2]!r} is not one of {m[1].replace(chr(39), '')}"
    m = re.search(r"Expected a (\w+)\. Got value: (.*)$", text)
    if m:
        return text[:m.start()] + f"{m[2]!r} is not a valid {m[1]}"
    return text


def _check_value(parser, f: dataclasses.Field, value: Any, hint, types: dict | None = None) -> Any:
    kind = (types or {}).get(f.name) or f.metadata.get("type")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if value is None or kind is None:
        if value is None:
            return None
        try:
            return parser.parse_object({f.name: value}, _skip_required=True)[f.name]
        except argparse.ArgumentError as e:
            raise ValueError(one_line(e).split(": ", 1)[-1]) from None
    try:
        return kind(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ValueError(f"{value!r}: {e}") from None


def split_config(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the --config files, the other arguments)."""
    files, rest, it = [], [], iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None:
                raise UserError("--config: expected a YAML file")
            files.append(path)
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
        else:
            rest.append(a)
    return files, rest


def parse(cls, argv: list[str], prog: str, description: str | None = None, record_only=(), types=None):
    """The settings ``cls`` from the command line ``argv`` and its ``--config`` files.

    Returns the dataclass, or ``None`` after printing it for ``--print_config``. The files
    are read first (a later one over an earlier one), then the command line over them; an
    unknown key or a bad value is a one-line UserError naming the file.
    """
    from .runinfo import read_settings_file

    parser = stage_parser(cls, prog, description, types)
    files, rest = split_config(list(argv))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in cli_fields(cls)}
    recorded = set(record_only) | {f.name for f in dataclasses.fields(cls)} - set(fields)
    for path in files:
        values = {}
        for key, value in read_settings_file(path).items():
            name = str(key).replace("-", "_")
            if name in recorded:
                continue
            if name not in fields:
                raise UserError(f"--config {path}: unknown setting {key!r} (--print_config lists them)")
            try:
                values[name] = _check_value(parser, fields[name], value, hints[name], types)
            except ValueError as e:
                raise UserError(f"--config {path}: {key}: {e}") from None
        parser.set_defaults(**values)
    printing = [a for a in rest if a.split("=", 1)[0] == "--print_config"]
    rest = [a for a in rest if a not in printing]  # handled here: jsonargparse's own needs ActionConfigFile
    try:
        ns = parser.parse_args(rest)
    except argparse.ArgumentError as e:
        raise UserError(one_line(e)) from None
    values = {name: ns[name] for name in fields}
    if printing:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ns.pop("config", None)
            ns.pop("print_config", None)
            print(parser.dump(ns, skip_validation=True), end="")
        return None
    return cls(**values)


def flags(cls, section: dict[str, Any], skip=()) -> list[str]:
    """A section's settings (config-file keys) as command-line flags for ``cls``'s command, in
    the section's order; lists become comma lists."""
    fields = {f.name: f for f in cli_fields(cls)}
    argv: list[str] = []
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name in skip or name not in fields or value is None:
            continue
        f = fields[name]
        if isinstance(value, bool) and typing.get_type_hints(cls)[name] is bool:
            if value != (not flag_of(f).startswith("--no-")):
                continue  # the default: no flag
            argv.append(flag_of(f))
            continue
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        argv += [flag_of(f), text]
    return argv


def check_section(cls, section: dict[str, Any], where: str, own=(), extra=(), types=None) -> None:
    """A YAML section of ``cls``'s settings (an experiment's ``generate:``): every key a
    setting (not one of ``own``, the caller's) or one of ``extra``, every value of its type."""
    fields = {f.name: f for f in cli_fields(cls) if f.name not in set(own)}
    unknown = sorted(str(k) for k in section
                     if str(k).replace("-", "_") not in fields and str(k).replace("-", "_") not in set(extra))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(set(fields) | set(extra)))})")
    parser = stage_parser(cls, "check", types=types)
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        name = str(key).replace("-", "_")
        if name in fields:
            try:
                _check_value(parser, fields[name], value, hints[name], types)
            except ValueError as e:
                raise UserError(f"{where}.{key}: {e}") from None


# Types of settings whose flag takes text the annotation cannot parse.

def index_list(value) -> list[int] | None:
    """``--views 0,1,2`` (or a YAML list; ``all``: every view) -> [0, 1, 2] | None."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "all")):
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        views = [int(v) for v in items if str(v).strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not views or min(views) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative indices, got {value!r}")
    return views


def comma_list(value) -> str | None:
    """A list from a YAML file as the comma list the flag takes (``categories: [chair, sofa]``)."""
    if value is None:
        return None
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

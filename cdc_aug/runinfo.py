"""What every run writes next to its output: the exact config, and seeds derived from it."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import UserError

CONFIG = "config.yaml"


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from a base seed and identifying parts (e.g. a sample key).

    Depends only on its inputs, so a sample's randomness does not depend on which
    process handled it or in which order.
    """
    text = "\x1f".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def environment() -> dict[str, Any]:
    import numpy

    env = {
        "cdc_aug": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
    }
    for mod in ("torch", "diffusers", "lightning", "trimesh"):
        m = sys.modules.get(mod)
        if m is not None:
            env[mod] = str(getattr(m, "__version__", "?"))
    return env


def write_config(out_dir: str | os.PathLike, config: dict[str, Any], name: str = CONFIG) -> Path:
    """Write ``config`` (plus the software environment) to ``out_dir/name``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    body = {"config": config, "environment": environment()}
    tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(body, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_config(out_dir: str | os.PathLike, name: str = CONFIG) -> dict[str, Any] | None:
    path = Path(out_dir) / name
    if not path.exists():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("config")


def check_resume(out_dir: str | os.PathLike, config: dict[str, Any], overwrite: bool, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to continue a run in ``out_dir`` that was started with other parameters.

    ``ignore`` names keys that may differ between resumed runs (workers, batch size, ...).
    """
    old = read_config(out_dir)
    if old is None or overwrite:
        return
    a = {k: v for k, v in old.items() if k not in ignore}
    b = {k: v for k, v in config.items() if k not in ignore}
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise UserError(
            f"{out_dir} holds a run with other parameters ({', '.join(diff)}); "
            "choose another --out or pass --overwrite"
        )


def read_settings_file(path: str | os.PathLike, flag: str = "--config") -> dict[str, Any]:
    """A YAML file of settings for ``flag``; a run's own config.yaml gives its settings."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as e:
        raise UserError(f"{flag}: cannot read {p} ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise UserError(f"{flag}: {p} is not valid YAML ({str(e).splitlines()[0]})") from e
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "environment" in data:
        data = data["config"]  # a run's config.yaml: settings + software environment
    if not isinstance(data, dict):
        raise UserError(f"{flag}: {p} must hold a mapping of settings")
    return data


def apply_settings_file(args, parser, path: str | os.PathLike, record_only=(), flag: str = "--config") -> None:
    """Fill the flags of ``args`` still at their defaults from the settings file ``path``.

    Keys are the flags' names (``t_in`` or ``t-in``); flags given on the command line win;
    ``record_only`` names keys a run's config.yaml holds that are not flags (skipped); any
    other unknown key, or a value outside a flag's choices, is a one-line error. Lists
    become comma lists, the form such flags take on the command line.
    """
    data = read_settings_file(path, flag)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "func", "_parser")}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in record_only:
            continue
        action = actions.get(dest)
        if action is None:
            raise UserError(f"{flag}: {path}: unknown setting {key!r}")
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if action.nargs == 0:  # a switch such as --overwrite
            if not isinstance(value, bool):
                raise UserError(f"{flag}: {path}: {key}: {value!r} is not true or false")
        elif value is not None:
            # the value the flag would hold had it been typed on the command line
            kind = action.type or str
            try:
                value = kind(value) if isinstance(value, str) or kind is str else value
            except (TypeError, ValueError):
                raise UserError(f"{flag}: {path}: {key}: {value!r} is not a {kind.__name__}") from None
        if action.choices is not None and value not in action.choices:
            raise UserError(f"{flag}: {path}: {key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
        if getattr(args, dest) == parser.get_default(dest):
            setattr(args, dest, value)

"""What every run writes next to its output: the exact config, seeds derived from it,
and the lock that keeps a second run out of the same directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import UserError
from .safeio import atomic_write_text

CONFIG = "config.yaml"
LOCK = ".lock"


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
    atomic_write_text(path, yaml.safe_dump(body, sort_keys=True))
    return path


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike, stage: str = "run"):
    """Hold an advisory lock (``fcntl.flock``) on ``out_dir/.lock`` for the block.

    A second run into the same directory fails at once with one line naming the pid that
    holds it, instead of deleting the first run's temporaries. The lock goes with the
    process (a killed run leaves nothing to clean up); the file stays and records the
    last holder's pid. Processes of one distributed run share it: only the main one
    takes it. On filesystems without flock support (some network mounts) no lock is taken.
    """
    import fcntl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = os.pread(fd, 128, 0).decode("ascii", "replace").strip().split(maxsplit=1)
                pid = holder[0] if holder else "?"
                raise UserError(f"{out}: another {holder[1] if len(holder) > 1 else 'run'} (pid {pid}) is "
                                f"writing this directory; wait for it or choose another --out") from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {stage}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)


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

"""Reading untrusted files with a size cap, committing outputs durably, and telling a
stage-level I/O fault from a bad input.

Caps (bytes; each can be lowered or raised with the environment variable named, e.g.
for tests or an unusually large corpus):

==================  ==============================  =======
what                variable                        default
==================  ==============================  =======
catalog properties  CDC_AUG_MAX_PROPERTIES_BYTES    16 MiB
OBJ file            CDC_AUG_MAX_OBJ_BYTES           256 MiB
MTL file            CDC_AUG_MAX_MTL_BYTES           16 MiB
texture file        CDC_AUG_MAX_TEXTURE_BYTES       64 MiB
shard member        CDC_AUG_MAX_MEMBER_BYTES        64 MiB
==================  ==============================  =======

Images are also bounded in pixels by Pillow's ``MAX_IMAGE_PIXELS`` (decompression bombs).

Durability: ``atomic_file`` (``atomic_write_bytes`` and ``atomic_write_text`` write through
it) writes a temporary file, fsyncs it, renames it into place and fsyncs the directory, so
a committed output survives a power cut and a crash never leaves a half-written file under
the final name.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

DEFAULT_CAPS = {
    "properties": 16 << 20,
    "obj": 256 << 20,
    "mtl": 16 << 20,
    "texture": 64 << 20,
    "member": 64 << 20,
    "json": 64 << 20,  # index.json, pix3d.json (11 MB), annotation files
}

# OSErrors that say the machine, not the input, is at fault: the stage stops (and can be
# resumed once fixed) instead of recording the item as a failure and moving on.
STAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def cap(kind: str) -> int:
    """The byte cap for ``kind`` (a key of DEFAULT_CAPS), from the environment if set."""
    value = os.environ.get(f"CDC_AUG_MAX_{kind.upper()}_BYTES")
    return int(value) if value else DEFAULT_CAPS[kind]


def human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


class TooLarge(ValueError):
    """A file or member larger than its cap (the message names both)."""


def read_capped(path: str | os.PathLike, kind: str) -> bytes:
    """The bytes of a regular file no larger than ``cap(kind)``; never reads more than
    cap + 1 bytes, so devices (``/dev/zero``) and growing files cannot exhaust memory."""
    limit = cap(kind)
    p = Path(path)
    if not p.is_file():
        raise TooLarge(f"{p}: not a regular file") if p.exists() else FileNotFoundError(
            errno.ENOENT, "no such file", str(p))
    with open(p, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{p.name}: larger than the {kind} cap of {human(limit)}")
    return data


def read_json(path: str | os.PathLike):
    """A JSON file read within the "json" cap; a one-line UserError when it is too large or
    not JSON (the caller checks the shape of what it holds)."""
    import json

    from .errors import UserError

    try:
        return json.loads(read_capped(path, "json"))
    except TooLarge as e:  # its message names the file already, or only its base name
        raise UserError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def check_size(path: str | os.PathLike, kind: str) -> None:
    """Raise TooLarge when ``path`` is not a regular file or exceeds ``cap(kind)``."""
    p = Path(path)
    if not p.is_file():
        raise TooLarge(f"{p}: not a regular file")
    if p.stat().st_size > cap(kind):
        raise TooLarge(f"{p.name}: {human(p.stat().st_size)}, larger than the {kind} cap of {human(cap(kind))}")


def confined(folder: str | os.PathLike, name: str) -> Path | None:
    """``folder/name`` resolved, or None when it lies outside ``folder`` (absolute paths,
    ``..``, symbolic links pointing out)."""
    base = Path(folder).resolve()
    target = (base / name.replace("\\", "/")).resolve()
    return target if base in target.parents else None


def is_stage_error(e: BaseException) -> bool:
    """True for an OSError about the machine (full disk, I/O error, permissions)."""
    return isinstance(e, OSError) and e.errno in STAGE_ERRNOS


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """The temporary name a writer of ``path`` uses (``.<name>.tmp-<pid>``; removed by
    ``clean_temporaries`` of the stage after a crash)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary file that, when the block ends
    without error, is fsynced, renamed into place and its directory fsynced. On any error
    (full disk, interrupt) the temporary file is removed and ``path`` is left as it was.
    Every durable output of the project is written through here."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))

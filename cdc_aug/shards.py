"""Shard I/O shared by every stage.

A stage writes its samples into numbered WebDataset tar shards under ``<root>/shards``.
Each shard is written by ``webdataset.TarWriter`` (fixed mtime and owner: the same samples
give the same bytes) onto a temporary file that is renamed into place
(``safeio.atomic_file``), then its sidecar ``<shard>.json`` (count, sha256, bytes, keys,
failures) the same way: a shard counts as complete only when its sidecar exists and
agrees with the tar on disk. A stage
started again skips complete shards and rewrites the others, so every key ends up exactly
once, however often it was interrupted. ``finalize`` merges the sidecars into
``index.json`` and ``failures.jsonl``.

Several processes may write different shards of one store at once (``generate`` gives
shard i to rank i % world_size); no two ever write the same file.

Reading: every consumer (generate, train, eval, verify) reads shards through
``verified_samples``, which first checks the shard against its ``index.json`` entry (name,
byte count, sha256; a shard already checked in this process with the same size, inode and
mtime is not hashed again), refuses compressed tars, and caps every member at
``safeio.cap("member")``; members are grouped into samples by webdataset's
``group_by_keys``. A shard that fails raises ``ShardDamaged``, which lists the keys
lost with it (from the shard's sidecar); a stage records them and marks its own output
shard for a retry, so a run started again after the input is repaired produces what a
clean run produces. ``index.json`` shard names must match ``<prefix>-NNNNNN.tar``; any
other name (``../../etc/hostname``) is a one-line error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .safeio import atomic_file, atomic_write_text, cap, human, is_stage_error, read_json
from .samples import encode_sample

INDEX = "index.json"
FAILURES = "failures.jsonl"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Failure:
    """One input that could not be processed, and why. Recorded, never dropped."""

    item: str
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "reason": self.reason, **self.extra}


class ShardStore:
    """The shards of one stage's output directory (``<root>/shards/<prefix>-NNNNNN.tar``)."""

    def __init__(self, root: str | os.PathLike, prefix: str, stage: str):
        self.root = Path(root)
        self.prefix = prefix
        self.stage = stage
        self.dir = self.root / "shards"

    # -- naming -------------------------------------------------------------------
    def name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def path(self, index: int) -> Path:
        return self.dir / self.name(index)

    def sidecar(self, index: int) -> Path:
        return self.dir / (self.name(index) + ".json")

    # -- state --------------------------------------------------------------------
    def read_sidecar(self, index: int) -> dict[str, Any] | None:
        try:
            return json.loads(self.sidecar(index).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_complete(self, index: int) -> bool:
        meta = self.read_sidecar(index)
        path = self.path(index)
        return meta is not None and path.exists() and path.stat().st_size == meta.get("bytes")

    def is_done(self, index: int, source: str | None = None) -> bool:
        """Complete, made from ``source`` (when given: what the stage read to make it, e.g.
        its input shard's sha256), and not written around a damaged input. Shards that are
        not done are written again, so a run after the input is repaired or changed
        produces what a clean run produces."""
        meta = self.read_sidecar(index) or {}
        return (self.is_complete(index) and not meta.get("retry")
                and (source is None or meta.get("source") == source))

    # -- writing ------------------------------------------------------------------
    def write(self, index: int, samples: Iterable[dict[str, Any]], failures: list[Failure] | None = None,
              source: str | None = None) -> dict:
        """Write shard ``index`` from ``samples`` (fields encoded by extension).

        ``failures`` is read after ``samples`` is exhausted, so a generator may append
        the inputs it had to skip while it runs. ``source`` (recorded in the sidecar)
        identifies what the shard was made from, for ``is_done``.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        # The old sidecar goes first and the new one is put in place last: until then the
        # shard counts as incomplete, so a stage-level fault (full disk, interrupt) anywhere
        # below leaves a shard that the next run writes again, and no temporaries.
        self.sidecar(index).unlink(missing_ok=True)
        with atomic_file(self.path(index)) as raw:
            out = _HashingWriter(raw)
            keys = _write_tar(out, samples, self.name(index))
        meta = {
            "name": self.name(index),
            "count": len(keys),
            "sha256": out.h.hexdigest(),
            "bytes": out.n,
            "keys": keys,
            "failures": [f.to_json() for f in (failures or [])],
        }
        if any(f.extra.get("retry") for f in (failures or [])):
            meta["retry"] = True
        if source is not None:
            meta["source"] = source
        atomic_write_text(self.sidecar(index), json.dumps(meta))
        return meta

    def clean_temporaries(self) -> int:
        """Remove temporary files left by interrupted writers (only when no writer runs:
        the stage holds the directory's lock, runinfo.output_lock)."""
        n = 0
        for d in (self.dir, self.root):
            if d.exists():
                for p in d.glob(".*.tmp-*"):
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        n += 1
        return n

    def finalize(self, num_shards: int, extra: dict[str, Any] | None = None, require_samples: bool = False,
                 failures: list[Failure] | None = None) -> dict:
        """Merge the sidecars of shards ``0..num_shards-1`` into index.json and failures.jsonl.
        ``require_samples``: a stage that produced no sample at all is a one-line UserError
        (after index.json and failures.jsonl are written, so the reasons can be read).
        ``failures``: problems found outside any shard (a damaged input catalog), listed first."""
        shards, failures = [], [f.to_json() for f in (failures or [])]
        for i in range(num_shards):
            meta = self.read_sidecar(i)
            if meta is None or not self.is_complete(i):
                raise RuntimeError(f"shard {self.name(i)} is not complete; run the stage again")
            shards.append({k: meta[k] for k in ("name", "count", "sha256", "bytes")})
            failures.extend({"shard": meta["name"], **f} for f in meta.get("failures", []))
        index = {
            "stage": self.stage,
            "prefix": self.prefix,
            "num_samples": sum(s["count"] for s in shards),
            "shards": shards,
            **(extra or {}),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
        atomic_write_text(self.root / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
        if require_samples and index["num_samples"] == 0:
            raise UserError(f"{self.root}: no samples produced, {len(failures)} failures "
                            f"(reasons in {self.root / FAILURES})")
        return index


def _write_tar(out, samples: Iterable[dict[str, Any]], name: str) -> list[str]:
    """Write ``samples`` as one tar onto ``out``; returns their keys in order."""
    from webdataset import TarWriter  # imports torch: only where shards are written

    keys: list[str] = []
    seen: set[str] = set()
    # Fixed mtime, owner and mode: the same samples give the same bytes, whichever
    # process and whenever. TarWriter writes each sample's members in sorted order.
    with TarWriter(out, user="cdc-aug", group="cdc-aug", mode=0o444, mtime=0, encoder=encode_sample) as tar:
        for sample in samples:
            key = sample["__key__"]
            # TarWriter takes any key; one with a dot would be read back as another key
            # (a key ends at the first dot of a member name), a repeated one as one sample.
            if "." in key:
                raise ValueError(f"sample key {key!r} contains a dot")
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in shard {name}")
            seen.add(key)
            keys.append(key)
            tar.write(sample)
    return keys


class _HashingWriter(io.RawIOBase):
    """Passes writes on to ``raw``, counting and hashing them (the sidecar's sha256 and
    byte count, without reading the shard back)."""

    def __init__(self, raw):
        self.raw, self.h, self.n = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.raw.write(b)


# -- reading ------------------------------------------------------------------------
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*-\d{6}\.tar$")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
               b"\x5d\x00\x00": "lzma"}


class ShardDamaged(UserError):
    """A shard that may not be used: missing, resized, altered, compressed or unreadable.
    ``lost_keys`` are the samples its sidecar lists (None when it has none). A UserError,
    so one that no stage handles is still a one-line message."""

    def __init__(self, path: Path, reason: str, lost_keys: list[str] | None = None):
        super().__init__(f"{Path(path).name}: {reason}")
        self.path, self.reason, self.lost_keys = Path(path), reason, lost_keys

    def lost(self, keep=None, show: int = 5) -> str:
        """``N keys lost (k1, k2, ...)`` for a one-line message."""
        if self.lost_keys is None:
            return "its keys are unknown (no sidecar)"
        keys = [k for k in self.lost_keys if keep is None or keep(k)]
        more = ", ..." if len(keys) > show else ""
        return f"{len(keys)} keys lost" + (f" ({', '.join(keys[:show])}{more})" if keys else "")

    def failures(self, keep=None) -> list[Failure]:
        """One shard-level Failure, then one per lost key (those ``keep`` accepts); all
        marked ``retry`` so the stage writes the output shard again on its next run."""
        keys = [k for k in (self.lost_keys or []) if keep is None or keep(k)]
        n = f"{len(keys)} keys lost" if self.lost_keys is not None else "keys unknown (no sidecar)"
        out = [Failure(self.path.name, f"corrupt input shard: {self.reason}; {n}", {"retry": True})]
        out += [Failure(k, f"lost with corrupt input shard {self.path.name}", {"retry": True}) for k in keys]
        return out


def _magic_check(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise ShardDamaged(path, f"{kind}-compressed; shards must be plain tar files")


def iter_tar_samples(path: str | os.PathLike, max_member: int | None = None) -> Iterator[dict[str, bytes]]:
    """Yield samples (``{"__key__", "__url__", "<field>": bytes}``) from one shard, in order,
    without checking it against index.json (``verified_samples`` does that).

    Members are grouped into samples by webdataset's ``group_by_keys`` (the key is the
    member name up to its first dot). Raises ``ShardDamaged`` for a compressed shard or a
    member larger than ``max_member`` (default ``safeio.cap("member")``), ``tarfile.TarError``,
    ``ValueError`` or ``OSError`` on a corrupt or truncated one.
    """
    from webdataset.tariterators import group_by_keys  # imports torch: only where shards are read

    return group_by_keys(_tar_members(Path(path), cap("member") if max_member is None else max_member))


def _tar_members(path: Path, limit: int) -> Iterator[dict[str, Any]]:
    """The members of a plain tar as webdataset's ``tar_file_iterator`` gives them
    (``fname``, ``data``, ``__url__``). Ours, not that one, because it opens with ``r|*``
    (a gzip or xz shard would be inflated, a bomb included), reads every member whole
    whatever its size, and stops quietly at a cut-off header; this one refuses compressed
    tars, refuses a member over ``limit`` before reading it, and raises on truncation."""
    _magic_check(path)
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            if member.size > limit:
                raise ShardDamaged(path, f"member {member.name!r} is {human(member.size)}, "
                                         f"larger than the member cap of {human(limit)}")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if len(data) != member.size:
                raise tarfile.ReadError(f"{member.name}: truncated ({len(data)} of {member.size} bytes)")
            yield {"fname": member.name, "data": data, "__url__": str(path)}
        end = tar.offset
    # tarfile stops quietly at a cut-off header; a complete shard ends in zero blocks.
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(1 << 16)
    if len(tail) < 1024 or tail.count(0) != len(tail):
        raise tarfile.ReadError(f"{path.name}: truncated or damaged after byte {end}")


def sidecar_keys(path: Path) -> list[str] | None:
    """The keys a shard's sidecar lists, or None without a readable sidecar."""
    try:
        keys = json.loads(path.with_name(path.name + ".json").read_text())["keys"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(k) for k in keys] if isinstance(keys, list) else None


def shard_keys(path: str | os.PathLike, entry: dict[str, Any] | None = None) -> list[str]:
    """The keys of one shard, in order: the list its sidecar holds (written with it), else
    the keys read through ``verified_samples`` (``ShardDamaged`` if that fails). The
    sidecar is trusted without hashing the shard, so a stage plans the same work whether or
    not an input is damaged; readers that must refuse damage call ``check_shard`` first."""
    path = Path(path)
    keys = sidecar_keys(path)
    return keys if keys is not None else [s["__key__"] for s in verified_samples(path, entry)]


_VERIFIED: dict[str, tuple] = {}  # path -> (size, inode, mtime_ns, sha256) of shards hashed here


def check_shard(path: str | os.PathLike, entry: dict[str, Any], check_hash: bool = True) -> None:
    """Raise ``ShardDamaged`` unless ``path`` is the shard ``entry`` (from index.json)
    describes: present, a plain tar, of its byte count and sha256."""
    path = Path(path)
    lost = None
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ShardDamaged(path, "missing", sidecar_keys(path)) from None
    if not path.is_file():
        raise ShardDamaged(path, "not a regular file", sidecar_keys(path))
    _magic_check(path)
    if st.st_size != entry.get("bytes"):
        lost = sidecar_keys(path)
        raise ShardDamaged(path, f"{st.st_size} bytes, index.json says {entry.get('bytes')}", lost)
    if not check_hash:
        return
    stamp = (st.st_size, st.st_ino, st.st_mtime_ns, entry.get("sha256"))
    if _VERIFIED.get(str(path)) == stamp:
        return
    if sha256_file(path) != entry.get("sha256"):
        raise ShardDamaged(path, "sha256 differs from index.json", sidecar_keys(path))
    _VERIFIED[str(path)] = stamp


def _entry_for(path: Path) -> dict[str, Any]:
    """The index.json entry of a shard at ``<root>/shards/<name>``."""
    root = path.parent.parent
    for e in read_index(root)["shards"]:
        if e["name"] == path.name:
            return e
    raise ShardDamaged(path, f"not listed in {root / INDEX}", sidecar_keys(path))


def verified_samples(path: str | os.PathLike, entry: dict[str, Any] | None = None) -> Iterator[dict[str, bytes]]:
    """The samples of one shard of a finished stage, after checking it against ``entry``
    (default: its own entry in ``<root>/index.json``). Every fault of the shard, found
    before or while reading, is a ``ShardDamaged`` listing the lost keys; a stage-level
    OSError (full disk, I/O error, permissions) passes through unchanged."""
    path = Path(path)
    check_shard(path, entry if entry is not None else _entry_for(path))
    try:
        yield from iter_tar_samples(path)
    except ShardDamaged:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:  # ValueError: a member twice in a sample
        if is_stage_error(e):
            raise
        raise ShardDamaged(path, f"unreadable ({e})", sidecar_keys(path)) from e


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """index.json of a stage directory, checked: a one-line UserError when it is missing,
    not JSON, not a mapping, or lists a shard under a name that is not ``<prefix>-NNNNNN.tar``
    (a name such as ``../../etc/hostname`` would read outside the directory)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    path = root / INDEX
    if not path.exists():
        raise UserError(f"{path}: missing (is {root} the output of a finished cdc-aug stage?)")
    index = read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("shards", []), list):
        raise UserError(f"{path}: not a cdc-aug index (expected an object with a 'shards' list)")
    for i, e in enumerate(index.get("shards", [])):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not SHARD_NAME.match(e["name"]):
            name = e.get("name") if isinstance(e, dict) else e
            raise UserError(f"{path}: shard {i} has an invalid name {name!r} (expected <prefix>-NNNNNN.tar)")
        if not isinstance(e.get("bytes"), int) or not isinstance(e.get("count"), int):
            raise UserError(f"{path}: shard {e['name']} lacks its byte count or sample count")
    return index


def shard_paths(root: str | os.PathLike) -> list[Path]:
    """Paths of the shards listed in ``root/index.json``, in order."""
    index = read_index(root)
    return [Path(root) / "shards" / s["name"] for s in index["shards"]]


def read_failures(root: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(root) / FAILURES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

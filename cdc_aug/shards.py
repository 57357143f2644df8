"""Shard I/O shared by every stage.

A stage writes its samples into numbered WebDataset tar shards under ``<root>/shards``.
Each shard is written under a temporary name, then a sidecar ``<shard>.json`` (count,
sha256, bytes, keys, failures) is written, then both are renamed into place: a shard
counts as complete only when its sidecar exists and agrees with the tar on disk. A stage
started again skips complete shards and rewrites the others, so every key ends up exactly
once, however often it was interrupted. ``finalize`` merges the sidecars into
``index.json`` and ``failures.jsonl``.

Several processes may write different shards of one store at once (``generate`` gives
shard i to rank i % world_size); no two ever write the same file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .samples import encode_sample

INDEX = "index.json"
FAILURES = "failures.jsonl"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        return meta is not None and path.exists() and path.stat().st_size == meta["bytes"]

    # -- writing ------------------------------------------------------------------
    def write(self, index: int, samples: Iterable[dict[str, Any]], failures: list[Failure] | None = None) -> dict:
        """Write shard ``index`` from ``samples`` (fields encoded by extension).

        ``failures`` is read after ``samples`` is exhausted, so a generator may append
        the inputs it had to skip while it runs.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(index)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        keys: list[str] = []
        seen: set[str] = set()
        h = hashlib.sha256()
        with open(tmp, "wb") as raw:
            hashing = _HashingWriter(raw, h)
            # Fixed mtime/owner/mode so the same samples give the same bytes.
            with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for sample in samples:
                    key = sample["__key__"]
                    if "." in key:
                        raise ValueError(f"sample key {key!r} contains a dot")
                    if key in seen:
                        raise ValueError(f"duplicate key {key!r} in shard {final.name}")
                    seen.add(key)
                    keys.append(key)
                    encoded = encode_sample(sample)
                    for fname in sorted(k for k in encoded if not k.startswith("__")):
                        data = encoded[fname]
                        info = tarfile.TarInfo(f"{key}.{fname}")
                        info.size = len(data)
                        info.mtime = 0
                        info.mode = 0o444
                        info.uname = info.gname = "cdc-aug"
                        tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        meta = {
            "name": final.name,
            "count": len(keys),
            "sha256": h.hexdigest(),
            "bytes": tmp.stat().st_size,
            "keys": keys,
            "failures": [f.to_json() for f in (failures or [])],
        }
        side_tmp = self.sidecar(index).with_name(f".{self.sidecar(index).name}.tmp-{os.getpid()}")
        side_tmp.write_text(json.dumps(meta))
        # Tar first, sidecar last: a crash in between leaves a tar without a sidecar,
        # which counts as incomplete and is rewritten on the next run.
        self.sidecar(index).unlink(missing_ok=True)
        os.replace(tmp, final)
        os.replace(side_tmp, self.sidecar(index))
        return meta

    def clean_temporaries(self) -> int:
        """Remove temporary files left by interrupted writers (only when no writer runs)."""
        n = 0
        if self.dir.exists():
            for p in self.dir.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def finalize(self, num_shards: int, extra: dict[str, Any] | None = None) -> dict:
        """Merge the sidecars of shards ``0..num_shards-1`` into index.json and failures.jsonl."""
        shards, failures = [], []
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
        _atomic_write_text(self.root / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
        _atomic_write_text(self.root / FAILURES, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
        return index


class _HashingWriter(io.RawIOBase):
    def __init__(self, raw, h):
        self.raw, self.h = raw, h

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.h.update(b)
        return self.raw.write(b)


# -- reading ------------------------------------------------------------------------
def iter_tar_samples(path: str | os.PathLike) -> Iterator[dict[str, bytes]]:
    """Yield samples (``{"__key__", "<field>": bytes}``) from one shard, in order.

    Members are grouped by key as WebDataset does: the key is the member name up to its
    first dot. Raises ``tarfile.TarError`` or ``OSError`` on a corrupt or truncated shard.
    """
    current: dict[str, bytes] | None = None
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key, fname = base.split(".", 1)
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__shard__": str(path)}
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if len(data) != member.size:
                raise tarfile.ReadError(f"{member.name}: truncated ({len(data)} of {member.size} bytes)")
            current[fname] = data
        end = tar.offset
    # tarfile stops quietly at a cut-off header; a complete shard ends in zero blocks.
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read()
    if len(tail) < 1024 or tail.count(0) != len(tail):
        raise tarfile.ReadError(f"{Path(path).name}: truncated or damaged after byte {end}")
    if current is not None:
        yield current


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """index.json of a stage directory, with a one-line error when it is missing."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    path = root / INDEX
    if not path.exists():
        raise UserError(f"{path}: missing (is {root} the output of a finished cdc-aug stage?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e


def shard_paths(root: str | os.PathLike) -> list[Path]:
    """Paths of the shards listed in ``root/index.json``, in order."""
    index = read_index(root)
    return [Path(root) / "shards" / s["name"] for s in index["shards"]]


def read_failures(root: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(root) / FAILURES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

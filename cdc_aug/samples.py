"""Typed sample fields, WebDataset style: a sample is ``__key__`` plus fields whose
file extension says how they are encoded.

Encoding is done here, once, deterministically (fixed PNG settings, sorted JSON keys),
so that the same inputs give byte-identical shards whatever process wrote them.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

KEY_SAFE = re.compile(r"[^A-Za-z0-9-]")


def sanitize_id(text: str) -> str:
    """Make an id safe for a WebDataset key: only ``[A-Za-z0-9-]`` survive."""
    out = KEY_SAFE.sub("-", str(text))
    return out or "x"


def make_key(synset: str, model_id: str, view: int) -> str:
    return f"{sanitize_id(synset)}_{sanitize_id(model_id)}_{view:02d}"


# channels -> PNG colour type: grey, grey + alpha, RGB, RGBA
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def encode_png(array: np.ndarray) -> bytes:
    """A lossless PNG of a uint8 (H, W) / (H, W, 2-4) or uint16 (H, W) array: every row
    with PNG filter type 0 (none), deflated by zlib at level 1.

    Written here rather than by Pillow because Pillow always picks a filter per row by
    trying four of them, with no option to fix it: two thirds of its encoding time on
    renders (masked objects on a zero background), for files no smaller than these
    (bench/render_throughput.py prints both). Any PNG reader decodes it; tests check
    that Pillow reads back the very array."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8 and arr.dtype != np.uint16:
        raise TypeError(f"PNG fields take uint8 or uint16 arrays, got {arr.dtype}")
    # (H, W, 1) would read back as (H, W): refused, as Pillow did
    chans = 1 if arr.ndim == 2 else arr.shape[-1] if arr.ndim == 3 and arr.shape[-1] > 1 else 0
    if chans not in _PNG_COLOR_TYPES or (arr.dtype == np.uint16 and chans != 1):
        raise TypeError(f"PNG fields take (H, W) or (H, W, 2-4) uint8 or (H, W) uint16 arrays, got "
                        f"{arr.shape} {arr.dtype}")
    h, w = arr.shape[:2]
    rows = np.zeros((h, 1 + w * chans * arr.itemsize), dtype=np.uint8)  # column 0: filter type 0
    rows[:, 1:] = arr.astype(">u2" if arr.dtype == np.uint16 else np.uint8, copy=False).reshape(h, -1).view(np.uint8)
    header = struct.pack(">IIBBBBB", w, h, 8 * arr.itemsize, _PNG_COLOR_TYPES[chans], 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(rows, 1)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _jsonable(obj: Any):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, default=_jsonable).encode("utf-8")


def decode_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


ENCODERS = {"png": encode_png, "npy": encode_npy, "json": encode_json}
DECODERS = {"png": decode_png, "npy": decode_npy, "json": decode_json}


def encode_sample(sample: dict[str, Any]) -> dict[str, bytes]:
    """Encode every field by its extension; bytes pass through unchanged."""
    out: dict[str, bytes] = {}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
            continue
        if isinstance(value, (bytes, bytearray)):
            out[name] = bytes(value)
            continue
        ext = name.rsplit(".", 1)[-1]
        if ext not in ENCODERS:
            raise ValueError(f"field {name!r}: no encoder for extension {ext!r}")
        out[name] = ENCODERS[ext](value)
    return out


def decode_field(name: str, data: bytes) -> Any:
    ext = name.rsplit(".", 1)[-1]
    return DECODERS[ext](data) if ext in DECODERS else data


def decode_sample(sample: dict[str, bytes], fields: list[str] | None = None) -> dict[str, Any]:
    """Decode the named fields (all when None); ``__key__`` and friends stay as they are."""
    out: dict[str, Any] = {}
    for name, data in sample.items():
        if name.startswith("__"):
            out[name] = data
        elif fields is None or name in fields:
            out[name] = decode_field(name, data)
    return out


# Fields each stage guarantees in every sample (checked by `cdc-aug verify`).
REQUIRED_FIELDS = {
    "render": ["rgba.png", "mask.png", "depth.npy", "normal.png", "camera.json", "meta.json"],
    "aug": ["image.png", "mask.png", "camera.json", "meta.json", "aug.json"],
}

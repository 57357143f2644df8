"""Loading, checking and normalising meshes, with a named reason for every rejection.

A shape is a list of ``trimesh.Trimesh`` parts (one per material), so textures and
colours survive; the ground truth uses their concatenation.

Untrusted files: the OBJ, its MTL files and textures are size-capped (cdc_aug.safeio:
256 MiB, 16 MiB, 64 MiB by default) and must be regular files inside the OBJ's folder.
An ``mtllib`` or ``map_Kd`` that points outside it (``/dev/zero``, ``../../secret.png``)
fails the shape as "unsafe reference" without being opened; an oversized file fails it as
"file too large". Textures are also bounded in pixels by Pillow's decompression-bomb check.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from cdc_aug.safeio import TooLarge, check_size, confined, read_capped

log = logging.getLogger(__name__)
logging.getLogger("trimesh").setLevel(logging.WARNING)  # "triangulating faces" for every quad OBJ


class ShapeError(Exception):
    """A shape that cannot be used; ``kind`` is one of the reasons recorded in failures.jsonl."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass
class Normalized:
    parts: list[trimesh.Trimesh]  # in the unit cube
    center: np.ndarray  # x_unit = (x - center) * scale
    scale: float
    notes: dict = field(default_factory=dict)  # goes into meta.json

    def merged(self) -> trimesh.Trimesh:
        verts, faces, off = [], [], 0
        for p in self.parts:
            verts.append(np.asarray(p.vertices, dtype=np.float64))
            faces.append(np.asarray(p.faces, dtype=np.int64) + off)
            off += len(p.vertices)
        return trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)

    @property
    def diagonal(self) -> float:
        """Length of the bounding-box diagonal (at most sqrt(3) in the unit cube)."""
        v = np.concatenate([p.vertices for p in self.parts])
        return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))

    @property
    def num_faces(self) -> int:
        return int(sum(len(p.faces) for p in self.parts))


# Only the diffuse map is drawn; a missing bump or specular map changes nothing on screen.
_TEX_KEYS = re.compile(r"^\s*(map_Kd)\s+(.+?)\s*$", re.MULTILINE)


def _referenced(folder: Path, what: str, name: str) -> Path | None:
    """``folder/name`` when it lies inside ``folder`` (None when it is not there);
    ShapeError for a name that points outside."""
    target = confined(folder, name)
    if target is None:
        raise ShapeError("unsafe reference", f"{what} {name!r} points outside the model's folder")
    return target if target.exists() else None


def _read_capped(path: Path, kind: str) -> bytes:
    try:
        return read_capped(path, kind)
    except TooLarge as e:
        raise ShapeError("file too large", str(e)) from e


def check_textures(obj_path: Path) -> list[str]:
    """The diffuse textures that the OBJ's MTL files name but that are not there (drawn
    in the material's plain colour, as Sweet Home 3D does; listed in meta.json). Raises
    ``unreadable texture`` for one that is there but cannot be decoded, ``unsafe
    reference`` for an MTL or texture outside the OBJ's folder, ``file too large`` for
    one over its cap (module docstring)."""
    from PIL import Image

    folder = obj_path.parent
    missing = []
    text = _read_capped(obj_path, "obj").decode("utf-8", errors="replace")
    for line in re.findall(r"^\s*mtllib\s+(.+?)\s*$", text, re.MULTILINE):
        mtl = _referenced(folder, "mtllib", line)
        if mtl is None:
            continue  # a missing MTL only loses colours; trimesh falls back to grey
        for _, value in _TEX_KEYS.findall(_read_capped(mtl, "mtl").decode("utf-8", errors="replace")):
            value = value.replace("\\", "/")
            # the name may follow options ("-bm 1 bump.png") or hold spaces
            found = [t for c in dict.fromkeys((value, value.split()[-1]))
                     if (t := _referenced(folder, "map_Kd", c)) is not None and t.is_file()]
            if not found:
                missing.append(value)
                continue
            data = _read_capped(found[0], "texture")
            try:
                import io

                with Image.open(io.BytesIO(data)) as im:
                    im.load()
            except Exception as e:  # noqa: BLE001 - any decoder error means the same to us
                raise ShapeError("unreadable texture", f"{found[0].name} ({type(e).__name__}: {e})") from e
    return sorted(set(missing))


class _ConfinedResolver(trimesh.resolvers.FilePathResolver):
    """trimesh's file resolver, limited to the OBJ's folder and to the size caps (trimesh
    reads the MTL and textures through it)."""

    def get(self, name: str) -> bytes:
        for candidate in (name.strip(), name.strip().lstrip("/"), os.path.split(name)[-1]):
            target = confined(self.parent, candidate)
            if target is not None and target.is_file():
                return read_capped(target, "mtl" if target.suffix.lower() == ".mtl" else "texture")
        raise FileNotFoundError(name)


def load_obj(path: Path) -> list[trimesh.Trimesh]:
    """An OBJ file's parts, with its materials and textures."""
    return read_obj(path)[0]


def read_obj(path: Path) -> tuple[list[trimesh.Trimesh], dict]:
    """An OBJ file's parts, and notes for meta.json (textures it names but lacks)."""
    if not path.exists():
        raise ShapeError("missing file", str(path))
    try:
        check_size(path, "obj")
    except TooLarge as e:
        raise ShapeError("file too large", str(e)) from e
    missing = check_textures(path)
    try:
        loaded = trimesh.load(str(path), file_type="obj", force="scene", process=False, skip_materials=False,
                              resolver=_ConfinedResolver(str(path)))
    except Exception as e:  # noqa: BLE001 - trimesh raises many types on bad input
        raise ShapeError("corrupt OBJ", f"{path.name}: {type(e).__name__}: {e}") from e
    parts = scene_parts(loaded)
    if not any(len(p.faces) for p in parts):
        data = path.read_bytes()
        try:
            text_like = b"\x00" not in data and bool(data.decode("utf-8"))
        except UnicodeDecodeError:
            text_like = False
        if data.strip() and not text_like:
            raise ShapeError("corrupt OBJ", f"{path.name}: not a text OBJ file")
    return parts, ({"missing_textures": missing} if missing else {})


def scene_parts(loaded) -> list[trimesh.Trimesh]:
    if isinstance(loaded, trimesh.Trimesh):
        return [loaded]
    parts = loaded.dump(concatenate=False) if isinstance(loaded, trimesh.Scene) else []
    return [p for p in parts if isinstance(p, trimesh.Trimesh)]


def plain_colours(part: trimesh.Trimesh) -> trimesh.Trimesh:
    """Replace a texture that pyrender cannot draw (no UV coordinates, or no image) by
    the material's main colour: pyrender's shader fails to compile for those (render/README.md, "Textures")."""
    vis = part.visual
    if getattr(vis, "kind", None) != "texture" and not isinstance(vis, trimesh.visual.TextureVisuals):
        return part
    uv = getattr(vis, "uv", None)
    mat = getattr(vis, "material", None)
    image = getattr(mat, "image", None) if mat is not None else None
    if image is None and mat is not None and hasattr(mat, "baseColorTexture"):
        image = mat.baseColorTexture
    if uv is not None and len(uv) == len(part.vertices) and image is not None:
        return part
    color = np.array([180, 180, 180, 255], dtype=np.uint8)
    if mat is not None:
        try:
            color = np.asarray(mat.main_color, dtype=np.uint8)
        except Exception:  # noqa: BLE001 - keep the grey
            pass
    part.visual = trimesh.visual.ColorVisuals(part, face_colors=np.tile(color, (len(part.faces), 1)))
    return part


def normalize(parts: list[trimesh.Trimesh], rotation: np.ndarray | None = None, notes: dict | None = None
              ) -> Normalized:
    """Check the parts and move them into the unit cube [-0.5, 0.5]^3 (bounding-box centre,
    longest edge 1; cdc_aug.layout). ``rotation`` (3x3) is applied first."""
    parts = [p for p in parts if len(p.faces) > 0]
    if not parts:
        raise ShapeError("empty mesh", "no faces")
    verts = np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in parts])
    if not np.all(np.isfinite(verts)):
        raise ShapeError("NaN vertices", f"{int((~np.isfinite(verts)).any(axis=1).sum())} non-finite vertices")
    for p in parts:
        if len(p.faces) and (p.faces.max() >= len(p.vertices) or p.faces.min() < 0):
            raise ShapeError("corrupt OBJ", "face index out of range")
    if rotation is not None:
        verts = verts @ np.asarray(rotation, dtype=np.float64).T
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    extent = hi - lo
    if np.sort(extent)[-2] <= 1e-9 * max(1.0, float(np.abs(verts).max())):
        raise ShapeError("degenerate mesh", f"extent {extent.tolist()}")
    area = sum(float(p.area) for p in parts)
    if not np.isfinite(area) or area <= 0:
        raise ShapeError("degenerate mesh", "zero surface area")
    center = (lo + hi) / 2
    scale = 1.0 / float(extent.max())
    out = []
    for p in parts:
        p = p.copy()
        v = np.asarray(p.vertices, dtype=np.float64)
        if rotation is not None:
            v = v @ np.asarray(rotation, dtype=np.float64).T
        p.vertices = (v - center) * scale
        out.append(plain_colours(p))
    return Normalized(out, center, scale, dict(notes or {}))

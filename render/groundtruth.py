"""Ground truth per shape, in the unit cube (cdc_aug.layout): SDF samples concentrated
near the surface (as DISN), surface points with normals, uniform occupancy points.

Inside/outside (SDF signs, occupancy labels) comes from ``cdc_aug.occupancy``, the test
``eval.metrics`` scores 3D IoU with: the generalised winding number (robust to holes,
overlapping parts and self-intersections, which ShapeNet and furniture meshes are full
of) over faces first oriented outward per connected patch, so that flipped or
mixed-winding meshes get the same labels as well-oriented ones. Surface normals come from
the same oriented faces (outward). Distances are exact point-to-triangle distances
(``igl.point_mesh_squared_distance``).

Provenance: every shape file carries a ``provenance`` attribute (JSON: source, synset,
model id, where the mesh came from - catalog and entry, ShapeNet path below the root, or
the procedural seed and generator version - and the ground-truth settings). A file is
reused only when its provenance is the one a run would write; a file that another shape
made is never overwritten: ``write`` stops the stage with a one-line error naming both
(``--shapes-dir`` separates the two). ``read`` checks the provenance against what the
reader expects and refuses a damaged file in one line (``GroundTruthError``).
"""

from __future__ import annotations

import io
import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import trimesh

from cdc_aug.errors import UserError
from cdc_aug.occupancy import Solid, inside
from cdc_aug.safeio import atomic_write_bytes

log = logging.getLogger(__name__)

PADDING = 0.1  # occupancy and uniform SDF points fill [-0.55, 0.55]^3, as Occupancy Networks
DATASETS = ("sdf_samples", "surface_points", "surface_normals", "occ_points", "occ_labels")


def unsigned_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    import igl

    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    d2 = igl.point_mesh_squared_distance(np.ascontiguousarray(points, dtype=np.float64), V, F)[0]
    return np.sqrt(np.maximum(d2, 0.0))


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside (cdc_aug.layout)."""
    d = unsigned_distance(mesh, points)
    return np.where(inside(mesh, points), -d, d)


def compute(mesh: trimesh.Trimesh, seed: int, surface_points: int = 100_000, sdf_points: int = 32_768,
            occ_points: int = 100_000) -> dict[str, np.ndarray]:
    """The arrays of one shape file. ``mesh`` is already in the unit cube."""
    rng = np.random.default_rng(seed)
    solid = Solid(mesh)  # faces oriented once, for the normals and the inside test below
    pts, face_idx = trimesh.sample.sample_surface(mesh, surface_points, seed=int(rng.integers(2**31)))
    normals = solid.face_normals[face_idx]
    # DISN-style: most samples hug the surface at two scales, the rest fill the box.
    n_near = int(sdf_points * 0.4)
    n_uniform = sdf_points - 2 * n_near
    base = pts[rng.integers(0, len(pts), 2 * n_near)]
    sigma = np.repeat([0.005, 0.025], n_near)[:, None]
    near = base + rng.normal(size=base.shape) * sigma
    half = 0.5 + PADDING / 2
    uniform = rng.uniform(-half, half, size=(n_uniform, 3))
    q = np.concatenate([near, uniform])
    occ = rng.uniform(-half, half, size=(occ_points, 3))
    # one winding-number pass for both point sets: the tree over the mesh is built once
    ins = solid.contains(np.concatenate([q, occ]))
    sdf = np.where(ins[: len(q)], -1.0, 1.0) * unsigned_distance(mesh, q)
    labels = ins[len(q):]
    return {
        "sdf_samples": np.concatenate([q, sdf[:, None]], axis=1).astype(np.float32),
        "surface_points": pts.astype(np.float32),
        "surface_normals": normals.astype(np.float32),
        "occ_points": occ.astype(np.float32),
        "occ_labels": labels.astype(np.uint8),
    }


class GroundTruthError(ValueError):
    """A shape file that cannot be used: unreadable, incomplete, or of another shape."""


def provenance_digest(provenance: str) -> str:
    import hashlib

    return hashlib.sha256(provenance.encode()).hexdigest()[:16]


def _describe(provenance: str | None) -> str:
    try:
        p = json.loads(provenance or "")
    except ValueError:
        return "an unknown shape"
    origin = p.get("origin", {})
    return f"{p.get('source')} {p.get('model_id')} ({', '.join(f'{k}={v}' for k, v in sorted(origin.items()))})"


LEGACY = "legacy"  # a complete file written before provenance was recorded (cdc-aug <= 0.x)


def stored_provenance(path: Path) -> str | None:
    """The provenance of an existing, complete shape file; None when it is missing, damaged
    or incomplete (then it is ours to write again); ``LEGACY`` when it records none."""
    import h5py

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            if not all(name in f for name in DATASETS) or "scale" not in f.attrs:
                return None
            value = f.attrs.get("provenance")
            return LEGACY if value is None else str(value)
    except (OSError, ValueError):  # truncated, not HDF5
        return None


def write(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write a shape file atomically (a crash never leaves a half-written .h5 behind).

    The file is built in memory and written with one plain write + fsync, so a full disk
    is an ordinary OSError (no HDF5 state to unwind, no temporary left behind). A
    complete file with another ``provenance`` is never replaced: UserError."""
    import h5py

    path = Path(path)
    mine = attrs.get("provenance")
    theirs = stored_provenance(path)
    if theirs == LEGACY and mine is not None:
        log.warning("%s: replacing a shape file without provenance (written by an older cdc-aug)", path)
    elif theirs is not None and mine is not None and theirs != mine:
        raise UserError(f"{path}: holds the ground truth of {_describe(theirs)}, not of {_describe(mine)}; "
                        "render into another --shapes-dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr, compression="gzip", compression_opts=1, shuffle=True)
        for k, v in attrs.items():
            f.attrs[k] = v
    atomic_write_bytes(path, buf.getvalue())


def is_complete(path: Path, provenance: str | None = None) -> bool:
    """True when ``path`` holds every dataset and was made with ``provenance`` (when given)."""
    stored = stored_provenance(Path(path))
    return stored is not None and (provenance is None or stored == provenance)


def check_provenance(attrs, path: Path, synset: str | None = None, model_id: str | None = None,
                     digest: str | None = None) -> None:
    """Raise GroundTruthError unless the file's provenance names ``synset``/``model_id``
    and (when given) has the ``digest`` its render directory recorded."""
    prov = attrs.get("provenance")
    if prov is None:  # written by an older cdc-aug: its own attributes name the shape
        if digest is not None:
            raise GroundTruthError(f"{path}: no provenance attribute, but its render directory recorded one "
                                   "(replaced by an older cdc-aug?); render it again")
        p = {"synset": attrs.get("synset"), "model_id": attrs.get("model_id")}
        prov = ""
    else:
        try:
            p = json.loads(str(prov))
        except ValueError:
            raise GroundTruthError(f"{path}: unreadable provenance attribute") from None
    if synset is not None and p.get("synset") != synset or model_id is not None and p.get("model_id") != model_id:
        raise GroundTruthError(f"{path}: holds {p.get('synset')}/{p.get('model_id')}, not {synset}/{model_id}")
    if digest is not None and provenance_digest(str(prov)) != digest:
        raise GroundTruthError(f"{path}: holds the ground truth of {_describe(str(prov))}, not the shape its "
                               "render directory was made from (another run replaced it?)")


def check_file(path: Path, synset: str, model_id: str, digest: str | None = None) -> None:
    """Raise GroundTruthError unless ``path`` is a complete, readable shape file of this
    shape (with this provenance digest, when given); reads attributes only."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            check_provenance(f.attrs, path, synset, model_id, digest)
            missing = [n for n in DATASETS if n not in f]
    except FileNotFoundError:
        raise GroundTruthError(f"{path}: missing") from None
    except OSError as e:
        raise GroundTruthError(f"{path}: unreadable shape file ({str(e).splitlines()[0]})") from e
    if missing:
        raise GroundTruthError(f"{path}: shape file lacks {', '.join(missing)}")


def read(path: str | Path, synset: str | None = None, model_id: str | None = None, digest: str | None = None,
         check: bool = False, names: tuple[str, ...] | None = None) -> dict:
    """The datasets ``names`` (default: all) and the attributes of a shape file. With
    ``check`` (or any expectation given) its provenance is checked; a missing, truncated or
    foreign file, or one without a dataset asked for, is a one-line GroundTruthError."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if check or synset or model_id or digest:
                check_provenance(f.attrs, path, synset, model_id, digest)
            out = {name: f[name][()] for name in (f if names is None else [n for n in names if n in f])}
            out["attrs"] = dict(f.attrs)
    except (OSError, KeyError) as e:
        raise GroundTruthError(f"{path}: unreadable shape file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    missing = [n for n in (DATASETS if names is None else names) if n not in out]
    if missing:
        raise GroundTruthError(f"{path}: shape file lacks {', '.join(missing)}")
    return out


class GroundTruthCache:
    """What a reader derives from the shape files of a shapes directory, kept for the
    ``size`` shapes used last (per process: a forked DataLoader worker starts from a copy,
    a pickled cache starts empty).

    ``prepare`` gets the datasets ``names`` of one shape file, read with its provenance
    checked against ``digests`` (shape key -> digest, ``layout.shape_provenance``), and
    returns what is kept: training keeps the SDF samples split by sign (reading and
    decompressing them was over half of a sample's loading time), eval the surface points
    in spatial order with their KD-tree. A file that cannot be used raises
    GroundTruthError, as does every later request for it, without reading it again.
    """

    def __init__(self, root: str | Path, names: tuple[str, ...] = DATASETS, prepare=None,
                 digests: dict | None = None, size: int = 64):
        self.root, self.names, self.prepare, self.size = Path(root), tuple(names), prepare, size
        self.digests = dict(digests or {})
        self._cache: OrderedDict[str, object] = OrderedDict()

    def __getstate__(self):
        return {**self.__dict__, "_cache": OrderedDict()}

    def get(self, synset: str, model_id: str):
        from cdc_aug.layout import shape_file

        key = f"{synset}_{model_id}"
        hit = self._cache.pop(key, None)
        if hit is None:
            try:
                data = read(shape_file(self.root, synset, model_id), synset, model_id, self.digests.get(key),
                            check=True, names=self.names)
                hit = self.prepare(data) if self.prepare is not None else data
            except GroundTruthError as e:
                hit = e
            if len(self._cache) >= self.size:
                self._cache.popitem(last=False)
        self._cache[key] = hit
        if isinstance(hit, GroundTruthError):
            raise GroundTruthError(str(hit))
        return hit

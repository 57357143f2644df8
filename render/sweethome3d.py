"""Sweet Home 3D furniture catalogs (``*.sh3f``, Debian's sweethome3d-furniture).

A catalog is a zip archive: ``PluginFurnitureCatalog.properties`` (Java properties) lists
each piece (``name#N``, ``category#N``, ``model#N``, ``creator#N``, ``modelRotation#N``)
and the archive holds each model's OBJ, MTL and textures in its own folder. Catalog
categories are rooms ("Bedroom", "Office"), so ShapeNet synsets come from the piece's
name. Licences differ per catalog (CC-0, CC-BY, ...): every sample's meta.json carries the
catalog, its licence and the model's author.

Extraction goes only into the cache directory given (inside the render directory), and
never anywhere else whatever the archive holds: absolute names, ``..`` components,
symbolic links and oversized archives are refused. The properties member is read with
a cap (``safeio.cap("properties")``, 16 MiB by default) checked against the bytes actually
inflated, so a small archive that inflates to gigabytes costs no memory; a catalog that
cannot be read (truncated, not a zip, no properties, over the cap) is recorded in
failures.jsonl as "corrupt catalog" with its file name.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from cdc_aug.safeio import cap, human
from cdc_aug.samples import sanitize_id

from .meshes import ShapeError

PROPERTIES = "PluginFurnitureCatalog.properties"
MAX_MODEL_BYTES = 512 << 20  # an OBJ folder larger than this is refused (zip bombs)

_EXCLUDE = re.compile(r"\b(plug|plugs|switch|socket|dimmer|fan|tennis|icon|railing|remote|freezer)\b")
# First match wins: "desk lamp" is a lamp, "sofa bed" a sofa, "television cabinet" a cabinet.
_RULES: list[tuple[str, re.Pattern]] = [(cat, re.compile(rx)) for cat, rx in [
    ("lamp", r"\b(lamp|lamps|light|lights|chandelier|spotlight)\b"),
    ("sofa", r"\b(sofa|sofas|couch|settee|loveseat)\b"),
    ("bed", r"\b(bed|beds|bunk|crib|cradle)\b"),
    ("chair", r"\b(chair|chairs|armchair|stool|stools)\b"),
    ("table", r"\b(table|tables|desk|desks)\b"),
    ("cabinet", r"\b(cabinet|cabinets|wardrobe|drawers|dresser|cupboard|sideboard|nightstand|commode|chest)\b"),
    ("bookshelf", r"\b(bookcase|bookshelf|shelves|shelf)\b"),
    ("bench", r"\b(bench)\b"),
    ("display", r"\b(tv|television|monitor)\b"),
    ("loudspeaker", r"\b(speaker|speakers|loudspeaker)\b"),
    ("telephone", r"\b(phone|telephone)\b"),
    ("piano", r"\b(piano)\b"),
    ("bathtub", r"\b(bathtub|bath)\b"),
    ("clock", r"\b(clock)\b"),
    ("washer", r"\b(washing machine)\b"),
    ("watercraft", r"\b(boat|rowboat|ship|canoe)\b"),
    ("car", r"\b(car|sedan|suv|van|beetle)\b"),
]]


def category_of(name: str) -> str | None:
    """The ShapeNet category name of a catalog piece, from its English name."""
    text = name.lower()
    if _EXCLUDE.search(text):
        return None
    for cat, rx in _RULES:
        if rx.search(text):
            return cat
    return None


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties: ``key=value`` / ``key: value``, ``#``/``!`` comments, backslash
    line continuations and ``\\uXXXX`` escapes."""
    out: dict[str, str] = {}
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.lstrip() if not buf else raw.lstrip()
        if not buf and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            buf += line[:-1]
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    for line in logical:
        m = re.match(r"((?:\\.|[^=:\s\\])*)\s*[=:\s]\s*(.*)$", line)
        key, value = (m.group(1), m.group(2)) if m else (line, "")
        out[_unescape(key)] = _unescape(value)
    return out


def _unescape(s: str) -> str:
    def sub(m: re.Match) -> str:
        e = m.group(1)
        if e.startswith("u"):
            return chr(int(e[1:], 16))
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(e, e)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", sub, s)


def read_properties_member(zf: zipfile.ZipFile) -> str:
    """The catalog's properties text, inflating at most ``cap("properties")`` + 1 bytes
    (the size in the zip header is the archive's claim, not a limit)."""
    limit = cap("properties")
    info = zf.getinfo(PROPERTIES)
    if info.file_size > limit:
        raise ShapeError("corrupt catalog", f"{PROPERTIES} claims {human(info.file_size)}, "
                                            f"larger than the properties cap of {human(limit)}")
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ShapeError("corrupt catalog", f"{PROPERTIES} inflates past the properties cap of {human(limit)}")
    return data.decode("latin-1")


def read_catalog(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(catalog header, [piece properties with the ``#N`` suffix removed, plus ``index``])."""
    with zipfile.ZipFile(path) as zf:
        text = read_properties_member(zf)
    props = parse_properties(text)
    header = {k: v for k, v in props.items() if "#" not in k}
    pieces: dict[int, dict[str, str]] = {}
    for k, v in props.items():
        base, sep, idx = k.rpartition("#")
        if sep and idx.isdigit():
            pieces.setdefault(int(idx), {"index": idx})[base] = v
    return header, [pieces[i] for i in sorted(pieces) if "model" in pieces[i]]


def list_catalog_shapes(catalog_dir: Path, pairs: list[tuple[str, str]], problems: list | None = None) -> list:
    """The pieces of the wanted categories in every catalog; a catalog that cannot be read
    is appended to ``problems`` (a ``Failure`` keyed by its file name) and skipped."""
    from cdc_aug.safeio import is_stage_error
    from cdc_aug.shards import Failure

    from .sources import ShapeRef

    wanted = {name: syn for syn, name in pairs}
    out = []
    for cat_path in sorted(catalog_dir.glob("*.sh3f")):
        try:
            header, pieces = read_catalog(cat_path)
        except (zipfile.BadZipFile, KeyError, OSError, ShapeError, EOFError, zlib.error, NotImplementedError) as e:
            if is_stage_error(e):
                raise
            detail = e.detail if isinstance(e, ShapeError) else f"{type(e).__name__}: {e}"
            if problems is not None:
                problems.append(Failure(cat_path.name, "corrupt catalog",
                                        {"source": "sweethome3d", "path": str(cat_path), "detail": detail}))
            continue
        seen: set[str] = set()
        for piece in pieces:
            cat = category_of(piece.get("name", ""))
            if cat not in wanted or piece.get("doorOrWindow") == "true":
                continue
            local = piece.get("id", "").rpartition("#")[2] or piece["index"]
            model_id = sanitize_id(f"{cat_path.stem}-{local}")
            if model_id in seen:
                model_id = sanitize_id(f"{model_id}-{piece['index']}")
            seen.add(model_id)
            rot = piece.get("modelRotation")
            rotation = tuple(float(x) for x in rot.split()) if rot and len(rot.split()) == 9 else None
            out.append(ShapeRef(
                "sweethome3d", wanted[cat], cat, model_id, path=str(cat_path), entry=piece["model"],
                rotation=rotation,
                extra={"catalog": header.get("name", cat_path.stem), "catalog_file": cat_path.name,
                       "license": header.get("license", ""), "author": piece.get("creator", ""),
                       "name": piece.get("name", ""), "furniture_id": piece.get("id", "")}))
    return out


def _safe_relative(name: str) -> PurePosixPath:
    """An archive member name as a relative path, or ShapeError for one that could escape."""
    n = name.replace("\\", "/")
    p = PurePosixPath(n)
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n) or any(part == ".." for part in p.parts):
        raise ShapeError("unsafe archive member", repr(name))
    return p


def safe_extract(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path,
                 strip: PurePosixPath = PurePosixPath("."), max_bytes: int = MAX_MODEL_BYTES) -> None:
    """Extract ``members`` under ``dest`` (without the leading ``strip`` folder). Never writes
    outside ``dest``: refuses absolute names, ``..``, symbolic links, and totals above
    ``max_bytes`` (checked against the bytes actually inflated, not the header's claim)."""
    dest_real = dest.resolve()
    total = 0
    for info in members:
        rel = _safe_relative(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ShapeError("unsafe archive member", f"{info.filename!r} is a symbolic link")
        if strip != PurePosixPath("."):
            rel = rel.relative_to(strip)
        target = (dest_real / rel).resolve()
        if target != dest_real and dest_real not in target.parents:
            raise ShapeError("unsafe archive member", repr(info.filename))
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise ShapeError("corrupt archive", f"model larger than {max_bytes >> 20} MiB")
                dst.write(chunk)


def extract_model(catalog: Path, entry: str, cache_dir: Path) -> Path:
    """The OBJ of one catalog piece, extracted (with its folder: MTL, textures) into
    ``cache_dir/sweethome3d/<catalog>/<folder>``; reused when already there."""
    rel = _safe_relative(entry[1:] if entry.startswith("/") else entry)
    folder = rel.parent
    final = cache_dir / "sweethome3d" / sanitize_id(catalog.stem) / sanitize_id(str(folder))
    obj = final / rel.name
    if (final / ".complete").exists():
        return obj
    try:
        zf = zipfile.ZipFile(catalog)
    except (zipfile.BadZipFile, OSError) as e:
        raise ShapeError("corrupt archive", f"{catalog.name}: {e}") from e
    with zf:
        if folder == PurePosixPath("."):
            members = [zf.getinfo(str(rel))] if str(rel) in zf.namelist() else []
        else:
            prefix = str(folder) + "/"
            members = [i for i in zf.infolist() if i.filename.replace("\\", "/").startswith(prefix)]
        if not any(i.filename.replace("\\", "/") == str(rel) for i in members):
            raise ShapeError("missing file", f"{entry} not in {catalog.name}")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            safe_extract(zf, members, tmp, strip=folder)
            (tmp / ".complete").touch()
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return obj

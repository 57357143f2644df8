"""Render-stage inputs: ShapeNet layouts, each kind of bad shape, Sweet Home 3D archives
(including hostile ones), bad flags, and an interrupted run resumed."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.samples import decode_sample
from cdc_aug.shards import ShardStore, iter_tar_samples, read_failures, shard_paths
from cdc_aug.verify import verify
from render.api import render_dataset
from render.meshes import ShapeError
from render.sweethome3d import category_of, extract_model, parse_properties, safe_extract

TINY = {"gt_surface_points": 500, "gt_sdf_points": 400, "gt_occ_points": 500, "progress": False}
BOX_V = [(x, y, z) for x in (-0.3, 0.3) for y in (0.0, 0.8) for z in (-0.2, 0.2)]
BOX_F = [(1, 3, 4, 2), (5, 6, 8, 7), (1, 2, 6, 5), (3, 7, 8, 4), (1, 5, 7, 3), (2, 4, 8, 6)]


def _obj(path: Path, uv: bool = False, mtl: str | None = None, verts=BOX_V) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"mtllib {mtl}", "usemtl skin"] if mtl else []
    lines += [f"v {x} {y} {z}" for x, y, z in verts]
    if uv:
        lines += ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1"]
        lines += ["f " + " ".join(f"{v}/{k + 1}" for k, v in enumerate(f)) for f in BOX_F]
    else:
        lines += ["f " + " ".join(map(str, f)) for f in BOX_F]
    path.write_text("\n".join(lines) + "\n")
    return path


def _textured(path: Path, uv: bool, image_ok: bool = True) -> Path:
    tex = path.parent / "wood.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_ok:
        Image.fromarray(np.tile(np.array([[200, 40, 40], [40, 40, 200]], np.uint8), (4, 4, 1))).save(tex)
    else:
        tex.write_bytes(b"\x89PNG\r\n\x1a\n this is no picture")
    (path.parent / "skin.mtl").write_text("newmtl skin\nKd 0.8 0.8 0.8\nmap_Kd wood.png\n")
    return _obj(path, uv=uv, mtl="skin.mtl")


@pytest.fixture()
def shapenet(tmp_path):
    root = tmp_path / "ShapeNetCore"
    chairs = root / "03001627"
    _textured(chairs / "a-textured-v1" / "model.obj", uv=True)
    _textured(chairs / "b-texture-no-uv" / "models" / "model_normalized.obj", uv=False)  # v2
    _obj(chairs / "c-plain" / "model.obj")
    (chairs / "d-missing").mkdir()
    (chairs / "e-corrupt").mkdir()
    (chairs / "e-corrupt" / "model.obj").write_bytes(bytes(range(256)) * 4)
    (chairs / "f-empty").mkdir()
    (chairs / "f-empty" / "model.obj").write_text("# exported by nothing\n")
    _obj(chairs / "g-degenerate" / "model.obj", verts=[(x, 0.0, 0.0) for x in range(8)])
    _obj(chairs / "h-nan" / "model.obj", verts=[(float("nan"), 0, 0)] + BOX_V[1:])
    _textured(chairs / "i-bad-texture" / "model.obj", uv=True, image_ok=False)
    _textured(chairs / "j-texture-missing" / "model.obj", uv=True)
    (chairs / "j-texture-missing" / "wood.png").unlink()
    _obj(root / "04379243" / "table-1" / "model.obj")
    return root


def test_shapenet_v1_v2_and_every_bad_shape_recorded(tmp_path, shapenet):
    out = tmp_path / "renders"
    index = render_dataset(out, source="shapenet", root=shapenet, categories="chair,04379243", max_shapes=0,
                           views=2, size=32, shapes_per_shard=3, **TINY)
    assert verify(out).ok
    reasons = {f["item"].split("_", 1)[1]: f["reason"] for f in read_failures(out)}
    assert reasons == {"d-missing": "missing file", "e-corrupt": "corrupt OBJ", "f-empty": "empty mesh",
                       "g-degenerate": "degenerate mesh", "h-nan": "NaN vertices",
                       "i-bad-texture": "unreadable texture"}
    rendered = {}
    for p in shard_paths(out):
        for raw in iter_tar_samples(p):
            s = decode_sample(raw)
            rendered.setdefault(s["meta.json"]["model_id"], []).append(s)
    assert sorted(rendered) == ["a-textured-v1", "b-texture-no-uv", "c-plain", "j-texture-missing", "table-1"]
    assert index["num_samples"] == 10 and index["num_shapes"] == 11
    # a texture the MTL names but nobody shipped: drawn in the material colour, and said so
    assert rendered["j-texture-missing"][0]["meta.json"]["missing_textures"] == ["wood.png"]
    assert "missing_textures" not in rendered["a-textured-v1"][0]["meta.json"]
    assert rendered["b-texture-no-uv"][0]["meta.json"]["version"] == "v2"
    # the texture is drawn: red and blue texels both show on the textured box
    rgb = rendered["a-textured-v1"][0]["rgba.png"][..., :3].reshape(-1, 3).astype(int)
    assert ((rgb[:, 0] - rgb[:, 2]) > 60).any() and ((rgb[:, 2] - rgb[:, 0]) > 60).any()
    splits = json.loads((out / "splits.json").read_text())
    ids = sorted(k for v in splits.values() for k in v)
    assert ids == sorted(f"{s}_{m}" for s, m in [("03001627", "a-textured-v1"), ("03001627", "b-texture-no-uv"),
                                                  ("03001627", "c-plain"), ("03001627", "j-texture-missing"),
                                                  ("04379243", "table-1")])


@pytest.fixture()
def only_bad(shapenet):
    d = shapenet / "only-bad" / "03001627"
    _obj(d / "flat" / "model.obj", verts=[(x, 0.0, 0.0) for x in range(8)])
    return shapenet / "only-bad"


def test_all_failed_exits_non_zero(tmp_path, only_bad, capsys):
    rc = cli_main(["render", "--source", "shapenet", "--root", str(only_bad), "--categories", "chair",
                   "--out", str(tmp_path / "r"), "--views", "1", "--size", "32", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cdc-aug render: error: nothing rendered: all 1 shapes failed (reasons in "
                   f"{tmp_path / 'r' / 'failures.jsonl'})"]
    assert json.loads((tmp_path / "r" / "failures.jsonl").read_text())["reason"] == "degenerate mesh"


@pytest.mark.parametrize("args, message", [
    (["--views", "0"], "--views: must be >= 1"),
    (["--size", "8"], "--size: must be >= 16"),
    (["--workers", "0"], "--workers: must be >= 1"),
    (["--max-shapes", "-1"], "--max-shapes: must be >= 0"),
    (["--categories", "chair,spaceship"], "--categories: unknown category 'spaceship'"),
    (["--categories", "bed"], "--categories: this source has no 'bed' shapes"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, capsys, args, message):
    rc = cli_main(["render", "--source", "procedural", "--out", str(tmp_path / "r"), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_shapenet_needs_root_and_default_source_needs_the_package(tmp_path, capsys, monkeypatch):
    assert cli_main(["render", "--source", "shapenet", "--out", str(tmp_path / "r")]) == 2
    assert "--root: required with --source shapenet" in capsys.readouterr().err
    import render.sources

    monkeypatch.setattr(render.sources, "SH3D_DIR", tmp_path / "no-such-dir")
    assert cli_main(["render", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "sweethome3d-furniture" in err and "--source procedural" in err


def test_interrupted_run_resumes_with_every_key_once(tmp_path, monkeypatch):
    out = tmp_path / "renders"
    kw = dict(source="procedural", categories="chair,table", max_shapes=3, views=2, size=32,
              shapes_per_shard=2, **TINY)
    real_write = ShardStore.write
    calls = []

    def crash_on_third(self, index, samples, failures=None, **kw):
        calls.append(index)
        if len(calls) == 3:
            next(iter(samples))  # some work done, then the machine goes down mid-shard
            raise KeyboardInterrupt
        return real_write(self, index, samples, failures, **kw)

    monkeypatch.setattr(ShardStore, "write", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(out, **kw)
    monkeypatch.setattr(ShardStore, "write", real_write)
    assert not (out / "index.json").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    assert sorted(done) == ["renders-000000.tar", "renders-000001.tar"]
    # a different configuration must not silently continue this run
    with pytest.raises(UserError, match="other parameters \\(views\\)"):
        render_dataset(out, **{**kw, "views": 3})
    index = render_dataset(out, **{**kw, "workers": 2})  # workers may differ
    assert verify(out).ok and index["num_samples"] == 6 * 2 and len(index["shards"]) == 3
    keys = [raw["__key__"] for p in shard_paths(out) for raw in iter_tar_samples(p)]
    assert len(keys) == len(set(keys)) == 12
    assert {p: (out / "shards" / p).stat().st_mtime_ns for p in done} == done  # finished shards untouched
    fresh = render_dataset(tmp_path / "fresh", **kw)
    assert [s["sha256"] for s in fresh["shards"]] == [s["sha256"] for s in index["shards"]]


# -- Sweet Home 3D archives -----------------------------------------------------------
def _catalog(path: Path, pieces: list[tuple[str, str, str]], extra_members=(), license="Public domain") -> Path:
    """A .sh3f with ``pieces`` = [(name, folder, creator)], each a box OBJ in its folder."""
    props = ["name=Test catalog \\u00e9", f"license={license}"]
    with zipfile.ZipFile(path, "w") as zf:
        for i, (name, folder, creator) in enumerate(pieces, 1):
            props += [f"id#{i}=Test#{folder}", f"name#{i}={name}", f"category#{i}=Living room",
                      f"model#{i}=/{folder}/{folder}.obj", f"creator#{i}={creator}"]
            obj = "\n".join([f"v {x} {y} {z}" for x, y, z in BOX_V] + ["f " + " ".join(map(str, f)) for f in BOX_F])
            zf.writestr(f"{folder}/{folder}.obj", obj)
        for name, data, mode in extra_members:
            info = zipfile.ZipInfo(name)
            if mode:
                info.external_attr = mode << 16
            zf.writestr(info, data)
        zf.writestr("PluginFurnitureCatalog.properties", "\n".join(props) + "\n")
    return path


def test_sweethome3d_catalog_renders_with_licence_and_author(tmp_path):
    cats = tmp_path / "catalogs"
    cats.mkdir()
    _catalog(cats / "Mine.sh3f", [("Kitchen chair", "kchair", "Ada"), ("Desk lamp", "dlamp", "Bob"),
                                  ("Wall socket", "socket", "Cy"), ("Coffee table", "ctable", "Dee")],
             license="Creative Commons Attribution 3.0")
    out = tmp_path / "renders"
    render_dataset(out, source="sweethome3d", root=cats, categories="chair,lamp", max_shapes=0, views=1, size=32,
                   **TINY)
    metas = [decode_sample(r)["meta.json"] for p in shard_paths(out) for r in iter_tar_samples(p)]
    assert [(m["category"], m["name"], m["author"]) for m in metas] == [("chair", "Kitchen chair", "Ada"),
                                                                        ("lamp", "Desk lamp", "Bob")]
    assert all(m["license"] == "Creative Commons Attribution 3.0" and m["catalog"] == "Test catalog \u00e9"
               and m["source"] == "sweethome3d" for m in metas)
    # extracted only into the render directory's cache
    assert sorted(p.name for p in (out / ".cache" / "sweethome3d" / "Mine").iterdir()) == ["dlamp", "kchair"]


def test_hostile_archive_members_never_escape(tmp_path):
    cats = tmp_path / "catalogs"
    cats.mkdir()
    _catalog(cats / "Evil.sh3f", [("Chair", "good", "A"), ("Chair", "slip", "B"), ("Chair", "abs", "C"),
                                  ("Chair", "link", "D")],
             extra_members=[("slip/../../../escaped.txt", b"gotcha", 0),
                            ("abs//tmp/escaped-abs.txt", b"gotcha", 0),
                            ("link/evil", "../../../../escaped-link", stat.S_IFLNK | 0o777)])
    out = tmp_path / "work" / "renders"
    render_dataset(out, source="sweethome3d", root=cats, categories="chair", max_shapes=0, views=1, size=32,
                   **TINY)
    cache = (out / ".cache").resolve()
    written = [p for p in tmp_path.rglob("*escaped*") if not p.resolve().is_relative_to(cache)]
    assert written == [] and not Path("/tmp/escaped-abs.txt").exists()
    reasons = {f["item"]: f["reason"] for f in read_failures(out)}
    assert reasons == {"03001627_Evil-slip": "unsafe archive member", "03001627_Evil-link": "unsafe archive member"}
    # "abs//tmp/..." is a relative name inside the model's folder: it lands in the cache
    assert (out / ".cache" / "sweethome3d" / "Evil" / "abs" / "tmp" / "escaped-abs.txt").exists()


@pytest.mark.parametrize("name", ["/etc/passwd", "../up.txt", "a/../../up.txt", "C:/win.txt", "a\\..\\..\\up.txt"])
def test_safe_extract_refuses_escaping_names(tmp_path, name):
    src = tmp_path / "x.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(name, b"x")
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    with zipfile.ZipFile(src) as zf, pytest.raises(ShapeError, match="unsafe archive member"):
        safe_extract(zf, zf.infolist(), dest)
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p != src] == []


def test_safe_extract_caps_inflated_size(tmp_path):
    src = tmp_path / "bomb.zip"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/big.obj", b"\0" * (1 << 20))
    with zipfile.ZipFile(src) as zf, pytest.raises(ShapeError, match="corrupt archive"):
        safe_extract(zf, zf.infolist(), tmp_path / "d", max_bytes=1 << 16)


def test_extract_model_reports_missing_entry_and_reuses_cache(tmp_path):
    cat = _catalog(tmp_path / "C.sh3f", [("Chair", "c1", "A")])
    obj = extract_model(cat, "/c1/c1.obj", tmp_path / "cache")
    assert obj.exists() and obj.is_relative_to(tmp_path / "cache")
    mtime = obj.stat().st_mtime_ns
    assert extract_model(cat, "/c1/c1.obj", tmp_path / "cache").stat().st_mtime_ns == mtime
    with pytest.raises(ShapeError, match="missing file"):
        extract_model(cat, "/nope/nope.obj", tmp_path / "cache")


def test_properties_and_category_mapping():
    props = parse_properties("# c\nname#1=Bill 10\\u20ac\nlong#1=a \\\n   b\nkey\\=x = v\n")
    assert props == {"name#1": "Bill 10\u20ac", "long#1": "a b", "key=x": "v"}
    assert [category_of(n) for n in ["Desk lamp", "Sofa bed", "Bedside table", "Television cabinet", "Armchair",
                                     "Table fan", "Wall double socket", "Wheelchair", "Bunk bed"]] == [
        "lamp", "sofa", "table", "cabinet", "chair", None, None, None, "bed"]


@pytest.mark.skipif(not Path("/usr/share/sweethome3d/furniture/BlendSwap-CC-0.sh3f").exists(),
                    reason="Debian's sweethome3d-furniture is not installed")
def test_real_debian_catalog_one_chair(tmp_path):
    out = tmp_path / "renders"
    render_dataset(out, source="sweethome3d", categories="chair", max_shapes=1, views=1, size=48, seed=1, **TINY)
    (raw,) = [r for p in shard_paths(out) for r in iter_tar_samples(p)]
    s = decode_sample(raw)
    assert s["meta.json"]["catalog_file"].endswith(".sh3f") and s["meta.json"]["license"]
    assert s["mask.png"].mean() > 10 and s["rgba.png"][..., :3][s["mask.png"] > 0].mean() > 40  # lit, not black
    assert os.path.isdir(out / ".cache" / "sweethome3d")


def test_config_file_sets_defaults_and_flags_win(tmp_path, capsys):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("source: procedural\ncategories: [sofa]\nmax_shapes: 1\nviews: 3\nsize: 32\n"
                   "gt_surface_points: 300\ngt_sdf_points: 200\ngt_occ_points: 300\n")
    out = tmp_path / "renders"
    assert cli_main(["render", "--config", str(cfg), "--views", "2", "--out", str(out), "--no-progress"]) == 0
    assert f"{out}: 2 views of 1 shapes in 1 shards; 0 shapes failed" in capsys.readouterr().out
    metas = [decode_sample(r)["meta.json"] for p in shard_paths(out) for r in iter_tar_samples(p)]
    assert [(m["category"], m["view"]) for m in metas] == [("sofa", 0), ("sofa", 1)]
    from render import groundtruth

    (h5,) = (tmp_path / "shapes").glob("*/*.h5")
    assert groundtruth.read(h5)["surface_points"].shape == (300, 3)
    cfg.write_text("viewz: 3\n")
    assert cli_main(["render", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    assert f"--config {cfg}: unknown setting 'viewz'" in capsys.readouterr().err


def test_out_that_is_a_file_and_categories_without_shapes(tmp_path, shapenet, capsys):
    (tmp_path / "afile").write_text("x")
    assert cli_main(["render", "--source", "procedural", "--out", str(tmp_path / "afile")]) == 2
    assert "--out: " in capsys.readouterr().err
    with pytest.raises(UserError, match="--categories: no shapes of sofa found for --source shapenet"):
        render_dataset(tmp_path / "r", source="shapenet", root=shapenet, categories="sofa", **TINY)


def _dies_on_three(task: int) -> int:
    if task == 3:
        os._exit(7)  # what a segfault in the GL driver looks like from outside
    return task * 10


def test_a_worker_that_dies_is_recorded_not_fatal():
    from render.api import ordered_pool

    out = list(ordered_pool(_dies_on_three, list(range(6)), 2, lambda task, err: ("crashed", task)))
    assert out == [0, 10, 20, ("crashed", 3), 40, 50]

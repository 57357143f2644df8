"""The catalogue of bad inputs (issue 13): memory bombs, escaping references, corrupt and
hostile shards, NaN cameras, truncated and foreign shape files, colliding ids, two runs
in one directory, a full disk, unsafe checkpoints. Every case must end in a one-line
error or a recorded skip, and a rerun once the fault is gone must produce exactly what a
clean run produces."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.layout import shape_file
from cdc_aug.runinfo import output_lock
from cdc_aug.samples import make_key
from cdc_aug.shards import ShardDamaged, ShardStore, read_failures, read_index, shard_paths, verified_samples
from cdc_aug.verify import verify
from tests.fake_renders import make_render_dir, write_backgrounds

REPO = Path(__file__).resolve().parents[1]
TINY = {"gt_surface_points": 300, "gt_sdf_points": 200, "gt_occ_points": 300, "progress": False}
BOX_V = [(x, y, z) for x in (-0.3, 0.3) for y in (0.0, 0.8) for z in (-0.2, 0.2)]
BOX_F = [(1, 3, 4, 2), (5, 6, 8, 7), (1, 2, 6, 5), (3, 7, 8, 4), (1, 5, 7, 3), (2, 4, 8, 6)]
GB = 1 << 30


def _obj_text(mtl: str | None = None) -> str:
    lines = [f"mtllib {mtl}", "usemtl skin"] if mtl else []
    lines += [f"v {x} {y} {z}" for x, y, z in BOX_V] + ["f " + " ".join(map(str, f)) for f in BOX_F]
    return "\n".join(lines) + "\n"


def _cli(args: list[str], env: dict | None = None, timeout: int = 300) -> tuple[int, list[str], int]:
    """``cdc-aug args`` in a fresh interpreter: (exit code, stderr lines without the
    progress/log noise, peak resident memory in bytes from getrusage)."""
    code = ("import resource, sys\n"
            "from cdc_aug.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                       timeout=timeout, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    rss = [int(x.split()[1]) * 1024 for x in lines if x.startswith("MAXRSS")]
    errors = [x for x in lines if x.startswith("cdc-aug ") or "Traceback" in x]
    return r.returncode, errors, rss[0] if rss else -1


# -- memory bombs and escaping references ------------------------------------------------
def _catalog(path: Path, props_extra: bytes = b"") -> Path:
    props = ["name=Cat", "license=CC0", "id#1=T#chair", "name#1=Kitchen chair", "model#1=/chair/chair.obj",
             "creator#1=Ada"]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("chair/chair.obj", _obj_text())
        with zf.open("PluginFurnitureCatalog.properties", "w", force_zip64=True) as f:
            f.write(("\n".join(props) + "\n").encode())
            block = b"#" * (1 << 20)
            for _ in range(len(props_extra) and int(props_extra)):
                f.write(block)
    return path


def test_catalog_properties_bomb_and_truncated_catalog_are_recorded(tmp_path):
    cats = tmp_path / "catalogs"
    cats.mkdir()
    _catalog(cats / "Good.sh3f")
    _catalog(cats / "Bomb.sh3f", props_extra=b"64")  # a comment block inflating to 64 MiB
    assert (cats / "Bomb.sh3f").stat().st_size < 1 << 20
    data = _catalog(tmp_path / "t.sh3f").read_bytes()
    (cats / "Truncated.sh3f").write_bytes(data[: len(data) // 2])
    out = tmp_path / "renders"
    rc, errors, rss = _cli(["render", "--source", "sweethome3d", "--root", str(cats), "--categories", "chair",
                            "--out", str(out), "--views", "1", "--size", "32", "--no-progress",
                            "--max-shapes", "0"], env={"CDC_AUG_MAX_PROPERTIES_BYTES": str(4 << 20)})
    assert rc == 0 and errors == [], errors
    assert rss < GB
    fails = {f["item"]: f for f in read_failures(out)}
    assert fails["Bomb.sh3f"]["reason"] == "corrupt catalog" and "4 MiB" in fails["Bomb.sh3f"]["detail"]
    assert fails["Truncated.sh3f"]["reason"] == "corrupt catalog"
    assert read_index(out)["num_samples"] == 1 and verify(out).ok


def test_obj_references_outside_the_folder_and_oversized_obj_fail_the_shape(tmp_path):
    root = tmp_path / "ShapeNetCore"
    chairs = root / "03001627"
    for name in ("good", "devzero", "escape", "big"):
        (chairs / name).mkdir(parents=True)
    (chairs / "good" / "model.obj").write_text(_obj_text())
    (chairs / "devzero" / "model.obj").write_text(_obj_text(mtl="/dev/zero"))
    (tmp_path / "secret.png").write_bytes(b"not for you")
    (chairs / "escape" / "skin.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd ../../../secret.png\n")
    (chairs / "escape" / "model.obj").write_text(_obj_text(mtl="skin.mtl"))
    (chairs / "big" / "model.obj").write_text(_obj_text() + "# padding\n" * 2000)
    out = tmp_path / "renders"
    rc, errors, rss = _cli(["render", "--source", "shapenet", "--root", str(root), "--categories", "chair",
                            "--out", str(out), "--views", "1", "--size", "32", "--no-progress", "--max-shapes", "0"],
                           env={"CDC_AUG_MAX_OBJ_BYTES": "4096"})
    assert rc == 0 and errors == [], errors
    assert rss < GB
    reasons = {f["item"].split("_", 1)[1]: (f["reason"], f["detail"]) for f in read_failures(out)}
    assert reasons["devzero"][0] == "unsafe reference" and "/dev/zero" in reasons["devzero"][1]
    assert reasons["escape"][0] == "unsafe reference" and "secret.png" in reasons["escape"][1]
    assert reasons["big"][0] == "file too large" and "4 KiB" in reasons["big"][1]
    assert "good" not in reasons and read_index(out)["num_samples"] == 1


# -- hostile and damaged shards ------------------------------------------------------------
@pytest.fixture()
def renders(tmp_path):
    return make_render_dir(tmp_path / "renders")


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory):
    return write_backgrounds(tmp_path_factory.mktemp("bg"))


def _reindex(root: Path, name: str) -> None:
    """Make index.json agree with a replaced shard (an attacker, or a careless copy)."""
    from cdc_aug.shards import sha256_file

    index = json.loads((root / "index.json").read_text())
    for e in index["shards"]:
        if e["name"] == name:
            p = root / "shards" / name
            e["bytes"], e["sha256"] = p.stat().st_size, sha256_file(p)
    (root / "index.json").write_text(json.dumps(index))


class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def test_gzip_shard_is_refused_without_inflating_it(tmp_path, renders):
    name = "renders-000000.tar"
    p = renders / "shards" / name
    with gzip.open(p, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo("03001627_chair0_00.depth.npy")
        info.size = 256 << 20  # 256 MiB of zeros in a few hundred KiB
        tar.addfile(info, _Zeros(info.size))
    _reindex(renders, name)
    rc, errors, rss = _cli(["verify", str(renders)])
    assert rc == 1 and rss < GB
    with pytest.raises(ShardDamaged, match="gzip-compressed"):
        next(verified_samples(p))


def test_member_over_the_cap_is_refused(tmp_path, monkeypatch):
    store = ShardStore(tmp_path, "aug", "aug")
    store.write(0, [{"__key__": "k", "depth.npy": np.zeros(1 << 16, np.float32)}])
    store.finalize(1)
    monkeypatch.setenv("CDC_AUG_MAX_MEMBER_BYTES", "1024")
    with pytest.raises(ShardDamaged, match="larger than the member cap of 1 KiB"):
        list(verified_samples(store.path(0)))
    assert any("member cap" in p for p in verify(tmp_path).problems)


def _cp(renders, backgrounds, out):
    return cli_main(["generate", "--mode", "copy-paste", "--backgrounds", str(backgrounds), "--in", str(renders),
                     "--out", str(out), "--no-progress", "--split", "all"])


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("config.yaml", ".lock")}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_input_shard_lists_lost_keys_and_rerun_after_repair_matches_clean(tmp_path, renders, backgrounds,
                                                                                 damage):
    clean = tmp_path / "clean"
    assert _cp(renders, backgrounds, clean) == 0
    p = renders / "shards" / "renders-000001.tar"
    good = p.read_bytes()
    lost = json.loads(p.with_name(p.name + ".json").read_text())["keys"]
    if damage == "flip":  # a byte inside a PNG: the tar still reads, only the hash can tell
        data = bytearray(good)
        data[good.index(b"IDAT") + 8] ^= 0xFF
        p.write_bytes(bytes(data))
    else:
        p.write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    assert _cp(renders, backgrounds, out) == 0
    fails = read_failures(out)
    assert {f["item"] for f in fails} == {"renders-000001.tar", *lost}
    assert read_index(out)["num_samples"] == read_index(clean)["num_samples"] - len(lost)
    # train and eval refuse it in one line that names the lost keys (a subset would bias them)
    from eval.evaluate import select
    from train_svr.data import open_shard_set

    with pytest.raises(UserError, match=f"renders-000001.tar: .*{len(lost)} keys lost \\({lost[0]}, "):
        open_shard_set(renders, "train", check_shapes=False)
    with pytest.raises(UserError, match=f"renders-000001.tar: .*{len(lost)} keys lost"):
        select(renders, "train", check_ground_truth=False)
    p.write_bytes(good)  # repaired: the rerun redoes the shard and matches a clean run byte for byte
    assert _cp(renders, backgrounds, out) == 0
    assert _tree_bytes(out) == _tree_bytes(clean)


def test_generate_that_produces_nothing_exits_non_zero(tmp_path, renders, backgrounds, capsys):
    for p in shard_paths(renders):
        p.write_bytes(p.read_bytes()[:1000])
    assert _cp(renders, backgrounds, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no samples produced" in err[0]


@pytest.mark.parametrize("index, message", [
    ([], "not a cdc-aug index"),
    ({"shards": [{"name": "../../etc/hostname", "bytes": 1, "count": 1, "sha256": "0"}]}, "invalid name"),
    ({"shards": [{"name": "renders-000000.tar"}]}, "lacks its byte count"),
])
def test_hostile_index_json_is_one_line(tmp_path, capsys, index, message):
    (tmp_path / "shards").mkdir()
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert cli_main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# -- NaN cameras, truncated and foreign shape files ---------------------------------------------
def _shape_files(render_dir: Path) -> None:
    """Ground truth for every shape of a fake render directory (a box each), with the
    provenance a render run writes."""
    from render import groundtruth

    shapes = render_dir.parent / "shapes"
    box = trimesh.creation.box(extents=(0.5, 0.8, 0.4))
    for p in shard_paths(render_dir):
        for raw in verified_samples(p):
            meta = json.loads(raw["meta.json"])
            path = shape_file(shapes, meta["synset"], meta["model_id"])
            if path.exists():
                continue
            arrays = groundtruth.compute(box, 0, surface_points=300, sdf_points=200, occ_points=300)
            prov = json.dumps({"source": "test", "synset": meta["synset"], "model_id": meta["model_id"]})
            groundtruth.write(path, arrays, {"scale": 1.0, "center": np.zeros(3), "provenance": prov})


def _nan_camera(render_dir: Path, key: str) -> None:
    """Rewrite the shard holding ``key`` with NaN in its camera (index.json agrees)."""
    for i, p in enumerate(shard_paths(render_dir)):
        samples = list(verified_samples(p))
        if any(s["__key__"] == key for s in samples):
            for s in samples:
                s.pop("__url__")  # where it was read from, not a field
                if s["__key__"] == key:
                    cam = json.loads(s["camera.json"])
                    cam["RT"][0][3] = float("nan")
                    s["camera.json"] = json.dumps(cam).encode()
            store = ShardStore(render_dir, "renders", "render")
            store.write(i, samples)
            index = read_index(render_dir)
            store.finalize(len(index["shards"]), extra={"shapes_dir": "../shapes"})
            return
    raise AssertionError(key)


def test_nan_camera_is_a_recorded_skip_in_train_and_eval(tmp_path, renders):
    from eval.evaluate import evaluate
    from train_svr.data import ShardStream, open_shard_set

    _shape_files(renders)
    bad = make_key("04379243", "table5", 0)  # view 0 of the test shape
    _nan_camera(renders, bad)
    summary = evaluate(renders, lambda image, camera: trimesh.creation.box(extents=(0.5, 0.8, 0.4)),
                       tmp_path / "eval", n_points=500, save_meshes=0, progress=False)
    fails = [json.loads(x) for x in (tmp_path / "eval" / "failures.jsonl").read_text().splitlines()]
    assert [f["item"] for f in fails] == [bad] and "NaN" in fails[0]["reason"]
    assert summary["overall"]["n_views"] == 1 and summary["n_failed"] == 1
    # train: the sample is skipped (logged with its key), the epoch still has its length
    _nan_camera(renders, make_key("03001627", "chair0", 0))
    stream = ShardStream([open_shard_set(renders, "train")], [1.0], 32, 64, epoch_samples=8)
    examples = list(stream)
    assert len(examples) == 8 and make_key("03001627", "chair0", 0) not in {e["key"] for e in examples}
    assert all(np.isfinite(e["RT"].numpy()).all() for e in examples)


def test_truncated_and_foreign_shape_files_are_recorded(tmp_path, renders):
    from eval.evaluate import evaluate
    from render.groundtruth import GroundTruthError, read
    from train_svr.data import ground_truth

    _shape_files(renders)
    shapes = renders.parent / "shapes"
    test_h5 = shape_file(shapes, "04379243", "table5")
    test_h5.write_bytes(test_h5.read_bytes()[:3000])
    with pytest.raises(UserError, match="no view could be scored"):
        evaluate(renders, lambda image, camera: trimesh.creation.box(), tmp_path / "eval", n_points=100,
                 save_meshes=0, progress=False)
    fails = [json.loads(x) for x in (tmp_path / "eval" / "failures.jsonl").read_text().splitlines()]
    assert len(fails) == 2 and "unreadable shape file" in fails[0]["reason"]
    # another shape's file under this shape's name: refused by every reader
    shutil.copyfile(shape_file(shapes, "03001627", "chair0"), shape_file(shapes, "03001627", "chair2"))
    with pytest.raises(GroundTruthError, match="holds 03001627/chair0, not 03001627/chair2"):
        read(shape_file(shapes, "03001627", "chair2"), "03001627", "chair2")
    with pytest.raises(GroundTruthError, match="not 03001627/chair2"):
        ground_truth(shapes).get("03001627", "chair2")


def test_other_seed_or_source_never_replaces_ground_truth(tmp_path, capsys):
    from render.api import render_dataset

    shapes = tmp_path / "shapes"
    kw = dict(source="procedural", categories="chair", max_shapes=1, views=1, size=32, shapes_dir=shapes, **TINY)
    render_dataset(tmp_path / "a", seed=0, **kw)
    before = {p.name: p.read_bytes() for p in shapes.rglob("*.h5")}
    render_dataset(tmp_path / "b", seed=1, **kw)  # other seed: other shapes, other ids, other files
    after = {p.name: p.read_bytes() for p in shapes.rglob("*.h5")}
    assert {k: after[k] for k in before} == before and len(after) == 2
    assert verify(tmp_path / "a").ok
    # a file swapped behind cdc-aug's back is caught by verify (and refused by train and eval)
    (a_h5,) = [p for p in shapes.rglob("*.h5") if p.name in before]
    (b_h5,) = [p for p in shapes.rglob("*.h5") if p.name not in before]
    shutil.copyfile(b_h5, a_h5)
    assert any("ground truth" in p and "not 03001627/proc-chair-0000" in p for p in verify(tmp_path / "a").problems)
    a_h5.write_bytes(before[a_h5.name])
    # the same id from another ShapeNet tree into the same store: one line, nothing replaced
    for tree in ("A", "B"):
        d = tmp_path / tree / "03001627" / "same"
        d.mkdir(parents=True)
        (d / "model.obj").write_text(_obj_text())
    args = ["render", "--source", "shapenet", "--categories", "chair", "--views", "1", "--size", "32",
            "--shapes-dir", str(shapes), "--no-progress"]
    assert cli_main([*args, "--root", str(tmp_path / "A"), "--out", str(tmp_path / "ra")]) == 0
    h5 = shape_file(shapes, "03001627", "same")
    first = h5.read_bytes()
    capsys.readouterr()
    assert cli_main([*args, "--root", str(tmp_path / "B"), "--out", str(tmp_path / "rb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "render into another --shapes-dir" in err[0], err
    assert h5.read_bytes() == first


# -- ids, locks, full disks, checkpoints -----------------------------------------------------
def test_colliding_ids_get_stable_distinct_keys(tmp_path):
    from render.api import render_dataset

    root = tmp_path / "sn"
    for name in ("dup_1", "dup.1", "solo"):
        (root / "03001627" / name).mkdir(parents=True)
        (root / "03001627" / name / "model.obj").write_text(_obj_text())
    index = render_dataset(tmp_path / "r", source="shapenet", root=root, categories="chair", max_shapes=0,
                           views=1, size=32, **TINY)
    assert index["num_samples"] == 3 and verify(tmp_path / "r").ok and read_failures(tmp_path / "r") == []
    keys = sorted(raw["__key__"] for p in shard_paths(tmp_path / "r") for raw in verified_samples(p))
    assert keys[2] == "03001627_solo_00"
    assert all(k.startswith("03001627_dup-1-") for k in keys[:2]) and keys[0] != keys[1]
    # stable: listing again (or alongside other shapes) gives the same ids
    from render.sources import list_shapes

    assert sorted(r.key + "_00" for r in list_shapes("shapenet", ["chair"], 0, 0, root)) == keys


def test_second_run_into_a_locked_directory_fails_at_once(tmp_path, capsys):
    out = tmp_path / "r"
    with output_lock(out, "cdc-aug render"):
        rc = cli_main(["render", "--source", "procedural", "--categories", "chair", "--max-shapes", "1",
                       "--views", "1", "--size", "32", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"pid {os.getpid()}" in err[0] and "another cdc-aug render" in err[0]
    assert not (out / "shards").exists()
    # the lock goes with its holder: the directory is usable at once afterwards
    assert cli_main(["render", "--source", "procedural", "--categories", "chair", "--max-shapes", "1",
                     "--views", "1", "--size", "32", "--out", str(out), "--no-progress"]) == 0


def _temporaries(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob(".*.tmp-*")]


@pytest.mark.parametrize("where", ["h5", "shard"])
def test_full_disk_stops_the_stage_and_a_rerun_matches_a_clean_run(tmp_path, monkeypatch, capsys, where):
    """ENOSPC simulated (a small filesystem needs root to mount): the stage stops with one
    line, no shape is recorded as failed, and the rerun completes it exactly."""
    import cdc_aug.shards
    import render.groundtruth

    argv = ["render", "--source", "procedural", "--categories", "chair,table", "--max-shapes", "2", "--views", "1",
            "--size", "32", "--shapes-per-shard", "2", "--no-progress", "--config", str(tmp_path / "gt.yaml")]
    (tmp_path / "gt.yaml").write_text("gt_surface_points: 300\ngt_sdf_points: 200\ngt_occ_points: 300\n")
    assert cli_main([*argv, "--out", str(tmp_path / "clean" / "r")]) == 0
    target = (render.groundtruth, "atomic_write_bytes") if where == "h5" else (cdc_aug.shards, "atomic_file")
    real = getattr(*target)
    calls = []

    def full(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(*target, full)
    out = tmp_path / "run" / "r"
    assert cli_main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "resumes" in err[0], err
    assert not (out / "index.json").exists()
    monkeypatch.setattr(*target, real)
    assert cli_main([*argv, "--out", str(out)]) == 0
    assert _temporaries(tmp_path / "run") == []
    assert verify(out).ok and read_failures(out) == []
    assert _tree_bytes(tmp_path / "run") == _tree_bytes(tmp_path / "clean")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_checkpoint_needing_code_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import torch

    from train_svr.inference import load_model

    _Evil.marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Evil()}}, ckpt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # weights_only=True must still win
    with pytest.raises(UserError, match="not a loadable cdc-aug SVR checkpoint") as e:
        load_model(ckpt)
    assert "\n" not in str(e.value) and not _Evil.marker.exists()
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.ckpt"):
        load_model(tmp_path / "junk.ckpt")


def test_decompression_bomb_images_are_one_line(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from cdc_aug.pretrain.data import load_photos

    img = tmp_path / "big.png"
    Image.new("RGBA", (64, 64)).save(img)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64² > 2 x 100: Pillow's bomb error
    assert cli_main(["composite", "--image", str(img), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image" in err[0] and "cannot read it as an image" in err[0], err
    with pytest.raises(UserError, match="big.png: not a readable image"):
        load_photos([img], 32)


def test_non_numeric_config_value_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("views: many\n")
    assert cli_main(["render", "--source", "procedural", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "c.yaml: views: 'many' is not a valid int" in err[0], err
    cfg.write_text("gt_sdf_points: lots\n")
    assert cli_main(["render", "--source", "procedural", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "gt_sdf_points: 'lots' is not a valid int" in capsys.readouterr().err


def test_rerun_after_a_catalog_is_repaired_matches_a_clean_run(tmp_path):
    from render.api import render_dataset

    def catalogs(d: Path, damaged: bool) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        for name in ("A", "B", "C"):
            _catalog(d / f"{name}.sh3f")
        if damaged:
            data = (d / "B.sh3f").read_bytes()
            (d / "B.sh3f").write_bytes(data[: len(data) // 2])
        return d

    kw = dict(source="sweethome3d", categories="chair", max_shapes=0, views=1, size=32, shapes_per_shard=1, **TINY)
    render_dataset(tmp_path / "clean" / "r", root=catalogs(tmp_path / "good", False), **kw)
    cats = catalogs(tmp_path / "cats", True)
    render_dataset(tmp_path / "run" / "r", root=cats, **kw)
    assert [f["item"] for f in read_failures(tmp_path / "run" / "r")] == ["B.sh3f"]
    catalogs(cats, False)
    render_dataset(tmp_path / "run" / "r", root=cats, **kw)
    assert read_failures(tmp_path / "run" / "r") == []
    assert _tree_bytes(tmp_path / "run" / "r" / "shards") == _tree_bytes(tmp_path / "clean" / "r" / "shards")
    assert (read_index(tmp_path / "run" / "r")["shards"] == read_index(tmp_path / "clean" / "r")["shards"])


def test_second_training_into_a_locked_run_directory_fails_at_once(tmp_path, capsys):
    from train_svr.cli import main as train_main

    renders = make_render_dir(tmp_path / "renders")
    _shape_files(renders)
    with output_lock(tmp_path / "runs" / "svr", "cdc-aug train"):
        with pytest.raises(UserError, match=f"another cdc-aug train \\(pid {os.getpid()}\\)"):
            train_main(["--config", str(REPO / "configs" / "train" / "tiny.yaml"), "--data.shards", str(renders),
                        "--name", "svr", "--runs_dir", str(tmp_path / "runs"), "--data.num_workers", "0",
                        "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"])
    assert not (tmp_path / "runs" / "svr" / "checkpoints").exists()


def test_n_in_that_does_not_divide_the_grid_is_refused_before_any_sample(tmp_path, renders, capsys):
    # the bundled model samples natively at 64x64: 3 does not divide it
    rc = cli_main(["generate", "--in", str(renders), "--out", str(tmp_path / "o"), "--n-in", "3", "--steps", "2",
                   "--no-progress", "--split", "all"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--n-in 3: does not divide the 64x64 grid" in err[0]
    assert not list((tmp_path / "o").glob("shards/*.tar"))


def test_json_inputs_are_read_within_a_cap(tmp_path, monkeypatch):
    from cdc_aug.errors import UserError
    from cdc_aug.safeio import read_json

    big = tmp_path / "index.json"
    big.write_text("[" + "0," * 600 + "0]")
    monkeypatch.setenv("CDC_AUG_MAX_JSON_BYTES", "1000")
    with pytest.raises(UserError, match=r"index.json: larger than the json cap"):
        read_json(big)
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")

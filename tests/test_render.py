"""The render stage end to end on procedural shapes (offline, CPU, tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from cdc_aug.layout import read_splits, shape_file, shape_key, shapes_dir, split_of_key
from cdc_aug.occupancy import inside
from cdc_aug.samples import REQUIRED_FIELDS, decode_sample
from cdc_aug.shards import iter_tar_samples, shard_paths
from cdc_aug.verify import verify
from render import groundtruth
from render.api import render_dataset

SMALL_GT = {"gt_surface_points": 3000, "gt_sdf_points": 2000, "gt_occ_points": 3000}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "renders"
    index = render_dataset(out, source="procedural", categories=("chair", "table", "lamp"), max_shapes=3,
                           views=3, size=64, seed=0, progress=False, shapes_per_shard=4, **SMALL_GT)
    return out, index


def _samples(out):
    for path in shard_paths(out):
        for raw in iter_tar_samples(path):
            yield decode_sample(raw)


def test_end_to_end_verifies_and_has_every_field(rendered):
    out, index = rendered
    assert index["num_samples"] == 3 * 3 * 3 and len(index["shards"]) == 3
    assert verify(out).ok
    keys = []
    for s in _samples(out):
        keys.append(s["__key__"])
        assert set(REQUIRED_FIELDS["render"]) <= set(s)
        rgba, mask, depth, normal = s["rgba.png"], s["mask.png"], s["depth.npy"], s["normal.png"]
        assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and mask.any()
        np.testing.assert_array_equal(rgba[..., 3], mask)
        assert depth.dtype == np.float32 and np.all((depth > 0) == (mask > 0))
        assert normal.shape == (64, 64, 3) and normal.dtype == np.uint8
        n = normal[mask > 0].astype(np.float32) / 127.5 - 1
        assert np.allclose(np.linalg.norm(n, axis=1), 1, atol=0.03)
        meta, cam = s["meta.json"], s["camera.json"]
        v, u = np.nonzero(mask)
        rays = np.linalg.solve(np.array(cam["K"]), np.stack([u, v, np.ones_like(u)]).astype(float)).T
        assert np.all((n * rays).sum(1) < 0.05)  # visible surfaces face the camera
        assert meta["source"] == "procedural" and meta["category"] in ("chair", "table", "lamp")
        assert s["__key__"] == f"{meta['synset']}_{meta['model_id']}_{meta['view']:02d}"
        assert np.array(cam["K"]).shape == (3, 3) and np.array(cam["RT"]).shape == (3, 4)
        assert cam["image_size"] == [64, 64] and 20 <= cam["elevation"] <= 30
        assert abs(((cam["azimuth"] - meta["view"] * 120 + 180) % 360) - 180) <= 60
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert len(keys) == len(set(keys)) == 27


def test_stored_surface_points_project_inside_the_mask(rendered):
    out, _ = rendered
    shapes = shapes_dir(out)
    for s in _samples(out):
        meta, cam = s["meta.json"], s["camera.json"]
        gt = groundtruth.read(shape_file(shapes, meta["synset"], meta["model_id"]))
        pts = gt["surface_points"].astype(np.float64)
        K, RT = np.array(cam["K"]), np.array(cam["RT"])
        c = pts @ RT[:, :3].T + RT[:, 3]
        assert np.all(c[:, 2] > 0)
        uv = c @ K.T
        uv = uv[:, :2] / uv[:, 2:]
        ij = np.round(uv).astype(int)
        mask = s["mask.png"] > 0
        assert ij.min() >= 0 and ij.max() < 64
        inside = mask[ij[:, 1], ij[:, 0]]
        # Points on the silhouette of a part two pixels wide (a lamp's pole at 64 px) may
        # round to a pixel whose centre the rasteriser left out; a shifted or flipped
        # camera would do far worse, and a shift by one pixel any way must not do better.
        assert inside.mean() > 0.8, (s["__key__"], inside.mean())
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            shifted = np.clip(ij + [dx, dy], 0, 63)
            assert mask[shifted[:, 1], shifted[:, 0]].mean() < inside.mean() + 0.01
        off = ndimage.distance_transform_edt(~mask)[ij[:, 1], ij[:, 0]]
        assert (off <= 1).mean() > 0.98 and off.max() <= 3
        # depth is the camera-frame z of the nearest surface: never behind a surface point
        # at that pixel, and equal to it for the visible ones
        d = s["depth.npy"][ij[:, 1], ij[:, 0]]
        assert (d[inside] <= c[inside, 2] + 0.05).mean() > 0.9  # edges of thin parts at 64 px
        assert (inside & (np.abs(d - c[:, 2]) < 0.02)).mean() > 0.1


def test_shape_files_follow_the_layout(rendered):
    out, _ = rendered
    shapes = shapes_dir(out)
    assert shapes == (out.parent / "shapes").resolve()
    files = sorted(shapes.glob("*/*.h5"))
    assert len(files) == 9
    gt = groundtruth.read(files[0])
    assert gt["sdf_samples"].shape == (2000, 4) and gt["surface_points"].shape == (3000, 3)
    assert gt["surface_normals"].shape == (3000, 3) and gt["occ_labels"].dtype == np.uint8
    assert gt["occ_points"].shape == (3000, 3)
    pts = gt["surface_points"]
    assert np.all(np.abs(pts) <= 0.5 + 1e-5) and np.isclose((pts.max(0) - pts.min(0)).max(), 1, atol=0.02)
    assert 0 < gt["occ_labels"].mean() < 0.5
    assert {"center", "scale", "synset", "model_id", "category", "source"} <= set(gt["attrs"])


def test_splits_cover_every_shape_once_with_each_split_per_category(rendered):
    out, _ = rendered
    splits = read_splits(out)
    all_ids = [k for v in splits.values() for k in v]
    assert len(all_ids) == len(set(all_ids)) == 9
    keys = {split_of_key(s["__key__"]) for s in _samples(out)}
    assert set(all_ids) == keys
    for syn in ("03001627", "04379243", "03636649"):
        for name in ("train", "val", "test"):
            assert any(k.startswith(syn) for k in splits[name]), (syn, name)
    assert shape_key("03001627", "proc-chair-0000") in all_ids


def test_same_seed_same_bytes_other_seed_other_shapes(tmp_path, rendered):
    out, index = rendered
    again = render_dataset(tmp_path / "renders", source="procedural", categories=("chair", "table", "lamp"),
                           max_shapes=3, views=3, size=64, seed=0, progress=False, shapes_per_shard=4,
                           workers=2, **SMALL_GT)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in index["shards"]]
    other = render_dataset(tmp_path / "other", source="procedural", categories="chair", max_shapes=1,
                           views=1, size=64, seed=1, progress=False, **SMALL_GT)
    first = next(_samples(tmp_path / "other"))
    # another seed makes another shape, under another id (so another shape file)
    assert first["__key__"] == shape_key("03001627", "proc-chair-s1-0000") + "_00"
    mine = next(s for s in _samples(out) if s["__key__"] == shape_key("03001627", "proc-chair-0000") + "_00")
    assert other["num_samples"] == 1 and not np.array_equal(first["mask.png"], mine["mask.png"])


def test_sdf_signs_on_watertight_and_open_meshes():
    import trimesh

    box = trimesh.creation.box(extents=[0.8, 0.6, 0.4])
    q = np.array([[0, 0, 0], [0.3, 0.2, 0.1], [0.45, 0, 0], [0, 0, 0.3], [0.5, 0.5, 0.5]], dtype=float)
    expected = np.array([-0.2, -0.1, 0.05, 0.1, np.linalg.norm([0.1, 0.2, 0.3])])
    np.testing.assert_allclose(groundtruth.signed_distance(box, q), expected, atol=1e-9)
    # Remove the two triangles of the +z face: no longer watertight, winding numbers still
    # say "inside" for the interior, as a ray-parity or normal test would not reliably.
    keep = ~np.isclose(box.triangles_center[:, 2], 0.2)
    open_box = trimesh.Trimesh(box.vertices, box.faces[keep], process=False)
    assert not open_box.is_watertight and len(open_box.faces) == 10
    sd = groundtruth.signed_distance(open_box, q)
    assert np.all(sd[:2] < 0) and np.all(sd[2:] > 0)
    # and with faces wound inconsistently (flip one face): still the right signs deep inside
    faces = open_box.faces.copy()
    faces[0] = faces[0][::-1]
    assert np.all(groundtruth.signed_distance(trimesh.Trimesh(box.vertices, faces, process=False), q[:1]) < 0)
    # overlapping closed parts (procedural shapes): inside both is inside once
    two = trimesh.util.concatenate([box, box.copy().apply_translation([0.2, 0, 0])])
    assert inside(two, np.array([[0.1, 0, 0], [0.7, 0, 0]])).tolist() == [True, False]


def test_written_config_records_the_run(rendered):
    import yaml

    out, _ = rendered
    cfg = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert cfg["source"] == "procedural" and cfg["views"] == 3 and cfg["size"] == 64
    assert cfg["shapes_dir"] == "../shapes"
    assert json.loads((out / "index.json").read_text())["shapes_dir"] == "../shapes"


def test_random_lighting_changes_shading_not_geometry(tmp_path):
    kw = dict(source="procedural", categories="sofa", max_shapes=1, views=2, size=48, progress=False, **SMALL_GT)
    render_dataset(tmp_path / "studio", **kw)
    render_dataset(tmp_path / "random", lighting="random", **kw)
    a, b = list(_samples(tmp_path / "studio")), list(_samples(tmp_path / "random"))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["mask.png"], y["mask.png"])
        np.testing.assert_array_equal(x["depth.npy"], y["depth.npy"])
        assert np.abs(x["rgba.png"].astype(int) - y["rgba.png"]).max() > 10
        lit = x["rgba.png"][..., :3][x["mask.png"] > 0]
        assert lit.mean() > 40  # the studio rig shows the shape; pyrender's default leaves it near black


def test_render_mask_with_stored_camera_reproduces_the_sample_mask(rendered):
    from render.renderer import render_mask
    from render.sources import list_shapes, load

    out, _ = rendered
    refs = {r.key: r for r in list_shapes("procedural", ("chair", "table", "lamp"), 3, 0)}
    for s in list(_samples(out))[::4]:
        meta, cam = s["meta.json"], s["camera.json"]
        mesh = load(refs[shape_key(meta["synset"], meta["model_id"])], out).merged()
        mask = render_mask(mesh, cam["K"], cam["RT"], 64)
        np.testing.assert_array_equal(mask, s["mask.png"] > 0)
        # and a camera moved sideways does not
        RT = np.array(cam["RT"])
        RT[0, 3] += 0.1
        assert not np.array_equal(render_mask(mesh, cam["K"], RT, 64), mask)

"""Metrics on analytic cases whose values are computed by hand."""

import math

import numpy as np
import pytest
import trimesh

from eval.metrics import EMPTY_DISTANCE, EMPTY_SCORES, chamfer_l1, iou, mesh_metrics, point_metrics
from train_svr.metrics import chamfer_l1 as validation_chamfer_l1


def fibonacci_sphere(n: int, r: float) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    return r * d, d


def cube_grid(a: float, h: float, shift=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Points on a regular grid of spacing ``h`` on each face of the cube of side ``a``."""
    t = np.linspace(-a / 2, a / 2, int(round(a / h)) + 1)
    u, v = (g.ravel() for g in np.meshgrid(t, t, indexing="ij"))
    pts, nrm = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = np.zeros((len(u), 3))
            p[:, axis] = sign * a / 2
            p[:, (axis + 1) % 3], p[:, (axis + 2) % 3] = u, v
            n = np.zeros_like(p)
            n[:, axis] = sign
            pts.append(p)
            nrm.append(n)
    return np.concatenate(pts) + np.asarray(shift), np.concatenate(nrm)


def test_concentric_spheres_chamfer_is_radius_gap():
    r1, r2 = 0.30, 0.35
    p1, n1 = fibonacci_sphere(50_000, r1)
    p2, n2 = fibonacci_sphere(50_000, r2)
    m = point_metrics(p1, n1, p2, n2, thresholds=(0.01, 0.06))
    # Every point is 0.05 from the other sphere radially, plus a tangential gap far below 1e-3.
    assert m["accuracy"] == pytest.approx(0.05, abs=1e-3)
    assert m["completeness"] == pytest.approx(0.05, abs=1e-3)
    assert m["chamfer_l1"] == pytest.approx(0.05, abs=1e-3)
    assert m["chamfer_l2"] == pytest.approx(0.05 ** 2, abs=1e-4)
    assert m["fscore@0.01"] == 0.0
    assert m["fscore@0.06"] == 1.0
    assert m["normal_consistency"] == pytest.approx(1.0, abs=1e-3)


def test_concentric_sphere_meshes():
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.25)
    gt, gt_n = fibonacci_sphere(100_000, 0.35)
    m = mesh_metrics(mesh, gt, gt_n, n_points=50_000)
    assert m["chamfer_l1"] == pytest.approx(0.10, abs=2e-3)
    assert m["normal_consistency"] > 0.99
    assert np.isnan(m["iou_3d"])  # no occupancy points given


def test_shifted_cube_matches_hand_computed_chamfer():
    a, d, h = 0.5, 0.05, 0.0025
    gt, gt_n = cube_grid(a, h)
    pred, pred_n = cube_grid(a, h, shift=(d, 0, 0))
    m = point_metrics(pred, pred_n, gt, gt_n)
    # Per unit of area, over the six faces of one cube against the shifted other:
    #  the face it moves away from: distance d; the face buried inside the other cube:
    #  E[min(d, u, v)], u, v ~ U(0, a/2) = (a/6)(1 - (1 - 2d/a)^3);
    #  the four side faces: 0 except a strip of width d, mean d/2 there.
    expected = (d + a / 6 * (1 - (1 - 2 * d / a) ** 3) + 4 * (d / a) * (d / 2)) / 6
    assert expected == pytest.approx(0.016778, abs=1e-6)
    assert m["accuracy"] == pytest.approx(expected, rel=0.02)
    assert m["completeness"] == pytest.approx(expected, rel=0.02)
    assert m["chamfer_l1"] == pytest.approx(expected, rel=0.02)
    # The side faces' normals agree, the others too (|n.n| with both along x), except
    # where a side point's nearest neighbour lies on a perpendicular face.
    assert 0.8 < m["normal_consistency"] <= 1.0


def test_shifted_box_iou_3d():
    a, d = 0.5, 0.05
    mesh = trimesh.creation.box(extents=(a, a, a))
    mesh.apply_translation((d, 0, 0))
    rng = np.random.default_rng(0)
    occ = rng.uniform(-0.55, 0.55, size=(200_000, 3))
    labels = (np.abs(occ) < a / 2).all(axis=1)
    gt, gt_n = cube_grid(a, 0.01)
    m = mesh_metrics(mesh, gt, gt_n, occ, labels, n_points=20_000)
    # overlap (a - d) a^2 over union 2a^3 - (a - d) a^2
    assert m["iou_3d"] == pytest.approx((a - d) / (a + d), abs=0.01)


def test_iou_3d_of_mesh_against_its_own_occupancy_is_one():
    mesh = trimesh.creation.box(extents=(0.4, 0.6, 0.8))
    rng = np.random.default_rng(1)
    occ = rng.uniform(-0.55, 0.55, size=(100_000, 3))
    labels = (np.abs(occ) < np.array([0.2, 0.3, 0.4])).all(axis=1).astype(np.uint8)
    pts, idx = trimesh.sample.sample_surface(mesh, 20_000, seed=0)
    m = mesh_metrics(mesh, pts, mesh.face_normals[idx], occ, labels, n_points=20_000)
    assert m["iou_3d"] == 1.0
    assert m["normal_consistency"] == pytest.approx(1.0, abs=1e-9)


def test_empty_prediction_gets_the_one_empty_definition():
    gt, gt_n = fibonacci_sphere(1000, 0.3)
    occ = np.zeros((10, 3))
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)  # faces, no area
    for mesh in (trimesh.Trimesh(), None, flat):
        m = mesh_metrics(mesh, gt, gt_n, occ, np.ones(10))
        assert m["empty"] is True
        assert m["accuracy"] == m["completeness"] == m["chamfer_l1"] == pytest.approx(math.sqrt(3))
        assert m["chamfer_l2"] == 3.0
        assert m["fscore@0.01"] == m["fscore@0.02"] == m["precision@0.01"] == m["recall@0.02"] == 0.0
        assert m["normal_consistency"] == -1.0
        assert m["iou_3d"] == 0.0
        assert {k: m[k] for k in EMPTY_SCORES} == EMPTY_SCORES
        # training's validation Chamfer is the same number (it was 1.0 before)
        assert validation_chamfer_l1(mesh, gt) == chamfer_l1(mesh, gt) == EMPTY_SCORES["chamfer_l1"]
    m = point_metrics(np.zeros((0, 3)), np.zeros((0, 3)), gt, gt_n)
    assert m["chamfer_l1"] == EMPTY_DISTANCE
    assert np.isnan(point_metrics(np.zeros((0, 3)), None, gt, None)["normal_consistency"])


def test_validation_chamfer_is_the_eval_chamfer():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.25)
    gt, gt_n = fibonacci_sphere(4000, 0.3)
    m = mesh_metrics(mesh, gt, gt_n, n_points=4000, seed=3)
    assert validation_chamfer_l1(mesh, gt, seed=3) == m["chamfer_l1"]
    assert m["chamfer_l1"] == pytest.approx(0.05, abs=3e-3)


def test_iou_3d_does_not_depend_on_face_orientation():
    """A flipped sphere scored IoU 0 with the signed winding number (im2mesh: 0.999)."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    rng = np.random.default_rng(2)
    occ = rng.uniform(-0.55, 0.55, size=(50_000, 3))
    labels = np.linalg.norm(occ, axis=1) < 0.3
    gt, gt_n = fibonacci_sphere(5000, 0.3)
    mixed = mesh.faces.copy()
    half = rng.permutation(len(mixed))[: len(mixed) // 2]
    mixed[half] = mixed[half, ::-1]
    ious = [mesh_metrics(trimesh.Trimesh(mesh.vertices, f, process=False), gt, gt_n, occ, labels,
                         n_points=5000)["iou_3d"] for f in (mesh.faces, mesh.faces[:, ::-1], mixed)]
    assert ious[0] == ious[1] == ious[2]
    # the polyhedron lies inside the sphere, its volume ratio is the analytic IoU
    ratio = mesh.volume / (4 / 3 * math.pi * 0.3 ** 3)
    assert ious[0] == pytest.approx(ratio, abs=0.005) and ious[0] > 0.98


def test_iou_3d_with_both_sets_empty_is_nan_and_left_out():
    tiny = trimesh.creation.box(extents=(0.01, 0.01, 0.01))  # a real mesh, no occupancy point inside
    occ = np.array([[0.3, 0.3, 0.3], [-0.3, 0.2, 0.1]])
    gt, gt_n = fibonacci_sphere(1000, 0.3)
    assert np.isnan(mesh_metrics(tiny, gt, gt_n, occ, np.zeros(2), n_points=1000)["iou_3d"])
    assert mesh_metrics(tiny, gt, gt_n, occ, np.array([1, 0]), n_points=1000)["iou_3d"] == 0.0


def test_fscore_thresholds_on_hand_made_points():
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    # pred->gt distances 0.005, 0.015, 0.03 ; gt->pred distances 0.005, 0.015, 0.03, 0.97
    pred = np.array([[0.005, 0, 0], [1.015, 0, 0], [2.03, 0, 0]])
    m = point_metrics(pred, None, gt, None, thresholds=(0.01, 0.02, 0.05))
    assert m["precision@0.01"] == pytest.approx(1 / 3)
    assert m["recall@0.01"] == pytest.approx(1 / 4)
    assert m["fscore@0.01"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert m["precision@0.02"] == pytest.approx(2 / 3)
    assert m["recall@0.02"] == pytest.approx(2 / 4)
    assert m["fscore@0.02"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["precision@0.05"] == 1.0
    assert m["recall@0.05"] == 0.75
    assert m["accuracy"] == pytest.approx((0.005 + 0.015 + 0.03) / 3)
    assert m["completeness"] == pytest.approx((0.005 + 0.015 + 0.03 + 0.97) / 4)
    assert np.isnan(m["normal_consistency"])


def test_normal_consistency_identical_flipped_and_perpendicular():
    p, n = fibonacci_sphere(5000, 0.3)
    same = point_metrics(p, n, p, n)
    assert same["normal_consistency"] == pytest.approx(1.0)
    assert same["chamfer_l1"] == 0.0 and same["fscore@0.01"] == 1.0
    # orientation does not count (im2mesh takes |cos|)
    assert point_metrics(p, -n, p, n)["normal_consistency"] == pytest.approx(1.0)
    perp = np.cross(n, np.array([0.0, 0.0, 1.0]))
    keep = np.linalg.norm(perp, axis=1) > 0.1
    assert point_metrics(p[keep], perp[keep], p[keep], n[keep])["normal_consistency"] == pytest.approx(0.0, abs=1e-9)


def test_iou_helper_and_bad_input():
    assert iou(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(1 / 3)
    assert np.isnan(iou(np.zeros(3), np.zeros(3)))  # undefined, as im2mesh's compute_iou
    with pytest.raises(ValueError, match="gt_points"):
        point_metrics(np.zeros((2, 3)), None, np.zeros((2, 2)), None)


def im2mesh_eval_pointcloud(pred, pred_n, gt, gt_n) -> dict:
    """im2mesh.eval.MeshEvaluator.eval_pointcloud's definitions, written out with brute-force
    distances (its KD-tree only speeds them up)."""
    from scipy.spatial.distance import cdist

    def p2p(src, src_n, tgt, tgt_n):
        d = cdist(src, tgt)
        idx = d.argmin(axis=1)
        src_n = src_n / np.linalg.norm(src_n, axis=-1, keepdims=True)
        tgt_n = tgt_n / np.linalg.norm(tgt_n, axis=-1, keepdims=True)
        return d[np.arange(len(src)), idx], np.abs((tgt_n[idx] * src_n).sum(axis=-1))

    comp, comp_n = p2p(gt, gt_n, pred, pred_n)
    acc, acc_n = p2p(pred, pred_n, gt, gt_n)
    return {"completeness": comp.mean(), "accuracy": acc.mean(), "normals": 0.5 * comp_n.mean() + 0.5 * acc_n.mean(),
            "chamfer-L2": 0.5 * ((comp ** 2).mean() + (acc ** 2).mean()), "chamfer-L1": 0.5 * (comp.mean() + acc.mean())}


def test_point_metrics_match_im2mesh_definitions():
    rng = np.random.default_rng(4)
    pred, gt = rng.normal(size=(700, 3)) * 0.2, rng.normal(size=(900, 3)) * 0.25
    pred_n, gt_n = rng.normal(size=(700, 3)), rng.normal(size=(900, 3))
    ours = point_metrics(pred, pred_n, gt, gt_n)
    ref = im2mesh_eval_pointcloud(pred, pred_n, gt, gt_n)
    for a, b in [("accuracy", "accuracy"), ("completeness", "completeness"), ("chamfer_l1", "chamfer-L1"),
                 ("chamfer_l2", "chamfer-L2"), ("normal_consistency", "normals")]:
        assert ours[a] == pytest.approx(ref[b], abs=1e-12), a


def test_ground_truth_in_z_order_keeps_every_score():
    """eval stores each shape's points in Z-order (faster queries): the pairs (point,
    normal) and (occupancy point, label) stay together. IoU counts points, so it is the
    same exactly; means over reordered points may differ in the last bit only."""
    from eval.evaluate import _for_metrics

    rng = np.random.default_rng(0)
    gt_mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    pts, idx = trimesh.sample.sample_surface(gt_mesh, 3000, seed=1)
    occ = rng.uniform(-0.55, 0.55, (4000, 3))
    data = {"surface_points": pts, "surface_normals": gt_mesh.face_normals[idx], "occ_points": occ,
            "occ_labels": (np.linalg.norm(occ, axis=1) < 0.3).astype(np.uint8)}
    stored = _for_metrics({k: v.copy() for k, v in data.items()})
    assert not np.array_equal(stored["occ_points"], data["occ_points"])
    pred = trimesh.creation.box(extents=(0.5, 0.4, 0.6))
    before = mesh_metrics(pred, data["surface_points"], data["surface_normals"], data["occ_points"],
                          data["occ_labels"], n_points=2000)
    after = mesh_metrics(pred, stored["surface_points"], stored["surface_normals"], stored["occ_points"],
                         stored["occ_labels"], n_points=2000, gt_tree=stored["tree"])
    assert before["iou_3d"] == after["iou_3d"] and 0 < after["iou_3d"] < 1
    assert after == pytest.approx(before, rel=1e-12)


def test_nearest_neighbours_match_scipy_exactly():
    """The metrics' search (pykdtree) against scipy's cKDTree: near, far-off and float32
    inputs, the same distances bit for bit and the same indices (no ties in random data)."""
    from scipy.spatial import cKDTree

    from eval.metrics import nearest, surface_tree

    rng = np.random.default_rng(0)
    target = rng.uniform(-0.5, 0.5, (5000, 3))
    for queries in (rng.uniform(-0.5, 0.5, (3000, 3)),  # among the points
                    rng.normal(0, 0.01, (3000, 3)) + [0.9, -0.9, 0.4],  # a far-off blob
                    rng.uniform(-0.5, 0.5, (3000, 3)).astype(np.float32)):  # as stored in h5
        d, i = nearest(surface_tree(target.astype(queries.dtype)), queries)
        d_ref, i_ref = cKDTree(target.astype(queries.dtype)).query(queries, k=1)
        assert d.dtype == np.float64 and np.array_equal(d, d_ref) and np.array_equal(i, i_ref)

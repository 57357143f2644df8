"""The one inside test (cdc_aug.occupancy) and the ground truth it labels, on meshes as real
files come: flipped, mixed winding (half the faces flipped), triangle soups, double-sided,
open (hemisphere, box without a face) and non-manifold (two boxes sharing an edge), against
analytic answers; and against Occupancy Networks' ray-parity test on closed meshes."""

import math

import numpy as np
import pytest
import trimesh

from cdc_aug.occupancy import Solid, inside
from render import groundtruth

RNG = np.random.default_rng(0)
Q = RNG.uniform(-0.55, 0.55, size=(20_000, 3))


def box(extents, center=(0.0, 0.0, 0.0), subdivide=2) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=extents)
    for _ in range(subdivide):  # more faces, so that flipping half of them is a real mixture
        m = m.subdivide()
    return m.apply_translation(center)


def in_box(q, extents, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    return (np.abs(q - np.asarray(center)) < np.asarray(extents) / 2).all(axis=1)


def box_distance(q, extents, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Unsigned distance to the surface of an axis-aligned box."""
    d = np.abs(q - np.asarray(center)) - np.asarray(extents) / 2
    outside = np.linalg.norm(np.maximum(d, 0), axis=1)
    return np.where((d < 0).all(axis=1), -d.max(axis=1), outside)


def variants(mesh: trimesh.Trimesh) -> dict[str, trimesh.Trimesh]:
    """The same surface as files deliver it."""
    F = mesh.faces
    mixed = F.copy()
    half = np.random.default_rng(1).permutation(len(F))[: len(F) // 2]
    mixed[half] = mixed[half, ::-1]
    tri = mesh.vertices[mixed]  # every face with its own vertices, as OBJ seams and exporters give
    return {
        "oriented": trimesh.Trimesh(mesh.vertices, F, process=False),
        "flipped": trimesh.Trimesh(mesh.vertices, F[:, ::-1], process=False),
        "mixed": trimesh.Trimesh(mesh.vertices, mixed, process=False),
        "mixed soup": trimesh.Trimesh(tri.reshape(-1, 3), np.arange(3 * len(F)).reshape(-1, 3), process=False),
        "double-sided": trimesh.Trimesh(mesh.vertices, np.concatenate([F, F[:, ::-1]]), process=False),
    }


def ray_parity_inside(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Occupancy Networks' definition (im2mesh/utils/libmesh/inside_mesh.py, written here
    from its description, brute force): a point is inside when the vertical rays up and down
    both cross the surface an odd number of times."""
    tri = mesh.vertices[mesh.faces]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    out = np.zeros(len(points), dtype=bool)
    for s in range(0, len(points), 500):
        p = points[s:s + 500, None, :]
        # barycentric coordinates of p's xy in each projected triangle
        det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
        det = np.where(det == 0, np.nan, det)
        u = ((p[..., 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (p[..., 1] - a[:, 1])) / det
        v = ((b[:, 0] - a[:, 0]) * (p[..., 1] - a[:, 1]) - (p[..., 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
        hit = (u > 0) & (v > 0) & (u + v < 1)
        z = a[:, 2] + u * (b[:, 2] - a[:, 2]) + v * (c[:, 2] - a[:, 2])
        up = (hit & (z >= p[..., 2])).sum(axis=1)
        down = (hit & (z < p[..., 2])).sum(axis=1)
        out[s:s + 500] = (up % 2 == 1) & (down % 2 == 1)
    return out


# -- closed meshes: every variant gives the analytic answer ---------------------------------

@pytest.mark.parametrize("name", ["oriented", "flipped", "mixed", "mixed soup", "double-sided"])
def test_closed_sphere_and_box_any_winding(name):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    r = np.linalg.norm(Q, axis=1)
    far = np.abs(r - 0.3) > 0.01  # the polyhedron departs from the sphere by < 0.01
    assert (inside(variants(sphere)[name], Q)[far] == (r < 0.3)[far]).all()
    ext = (0.6, 0.4, 0.5)
    far = box_distance(Q, ext) > 1e-6
    assert (inside(variants(box(ext))[name], Q)[far] == in_box(Q, ext)[far]).all()


def test_the_signed_winding_number_was_not_enough():
    """What the old test (w > 0.5) did with the same files: these are the cases fixed."""
    import igl

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    truth = np.linalg.norm(Q, axis=1) < 0.3
    for name in ("flipped", "mixed", "double-sided"):
        m = variants(sphere)[name]
        w = igl.fast_winding_number(np.asarray(m.vertices, float), np.asarray(m.faces, np.int64), Q)
        assert ((w > 0.5) & truth).sum() < 0.05 * truth.sum(), name  # (nearly) nothing inside


def test_agrees_with_occupancy_networks_ray_parity_on_closed_meshes():
    q = Q[:3000]
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    for name, m in variants(sphere).items():
        if name == "double-sided":
            continue  # ray parity counts every crossing twice there: all "outside"
        assert (inside(m, q) == ray_parity_inside(m, q)).mean() > 0.999, name


# -- open meshes ----------------------------------------------------------------------------

def rectangle_solid_angle(p, x0, x1, y0, y1, zr) -> np.ndarray:
    """Solid angle of the rectangle [x0, x1] x [y0, y1] in the plane z = zr seen from p."""
    d = np.abs(p[:, 2] - zr)

    def corner(x, y):
        a, b = x - p[:, 0], y - p[:, 1]
        return np.arctan2(a * b, d * np.sqrt(a * a + b * b + d * d))

    return corner(x1, y1) - corner(x0, y1) - corner(x1, y0) + corner(x0, y0)


@pytest.mark.parametrize("name", ["oriented", "flipped", "mixed", "mixed soup"])
def test_box_without_a_face_is_the_box(name):
    """Inside, w = 1 - Omega/4pi (Omega: solid angle of the missing face), outside
    |w| = Omega/4pi <= 1/2: the open box is labelled as the closed one. Ray parity (ONet)
    calls its inside empty, since the ray up leaves through the hole."""
    ext = np.array([0.6, 0.4, 0.5])
    full = box(ext)
    top = np.isclose(full.triangles_center[:, 2], 0.25)
    open_box = variants(trimesh.Trimesh(full.vertices, full.faces[~top], process=False))[name]
    solid = Solid(open_box)
    far = box_distance(Q, ext) > 0.01
    truth = in_box(Q, ext)
    assert (solid.contains(Q)[far] == truth[far]).all()
    omega = rectangle_solid_angle(Q, -0.3, 0.3, -0.2, 0.2, 0.25) / (4 * math.pi)
    expected = np.where(truth, 1 - omega, omega)
    # the fast winding number's far-field expansion is good to a few 1e-3; the exact sum
    # over the oriented faces is the analytic value
    np.testing.assert_allclose(np.abs(solid.winding_number(Q))[far], expected[far], atol=5e-3)
    import igl

    exact = igl.winding_number(solid.vertices, np.ascontiguousarray(solid.faces[solid.counted]), Q[:2000])
    np.testing.assert_allclose(np.abs(exact), expected[:2000], atol=1e-9)
    if name == "oriented":
        assert not ray_parity_inside(open_box, Q[:2000])[truth[:2000]].any()


@pytest.mark.parametrize("name", ["oriented", "flipped", "mixed", "mixed soup"])
def test_open_hemisphere_on_its_axis(name):
    """On the axis of an open hemisphere (z >= 0) of radius R, the half ball plus the disk
    closing it give w = 1/2 + z / (2 sqrt(z^2 + R^2)): inside for z > 0 only."""
    R = 0.3
    sphere = trimesh.creation.uv_sphere(radius=R, count=[33, 64])  # a ring of vertices at z = 0
    upper = sphere.triangles_center[:, 2] > 0
    hemi = variants(trimesh.Trimesh(sphere.vertices, sphere.faces[upper], process=False))[name]
    z = np.linspace(-0.28, 0.28, 57)
    axis = np.stack([0 * z, 0 * z, z], axis=1)
    w = np.abs(Solid(hemi).winding_number(axis))
    np.testing.assert_allclose(w, 0.5 + z / (2 * np.sqrt(z ** 2 + R ** 2)), atol=0.01)
    assert (inside(hemi, axis[z != 0]) == (z[z != 0] > 0)).all()


# -- non-manifold and overlapping parts -----------------------------------------------------

def test_two_boxes_sharing_an_edge():
    """The shared edge has four faces (non-manifold): each box is oriented on its own."""
    e = (0.3, 0.3, 0.3)
    c1, c2 = (-0.15, -0.15, 0.0), (0.15, 0.15, 0.0)
    b1, b2 = box(e, c1), box(e, c2)
    merged = trimesh.Trimesh(np.concatenate([b1.vertices, b2.vertices]),
                             np.concatenate([b1.faces, b2.faces + len(b1.vertices)]))  # merges the edge
    assert not merged.is_watertight  # four faces on the shared edge
    truth = in_box(Q, e, c1) | in_box(Q, e, c2)
    far = np.minimum(box_distance(Q, e, c1), box_distance(Q, e, c2)) > 1e-6
    one_flipped = merged.faces.copy()
    second = merged.triangles_center[:, 0] > 0
    one_flipped[second] = one_flipped[second, ::-1]
    meshes = dict(variants(merged), **{"one box flipped": trimesh.Trimesh(merged.vertices, one_flipped, process=False)})
    for name, m in meshes.items():
        assert (inside(m, Q)[far] == truth[far]).all(), name


def test_overlapping_parts_one_open_and_flipped():
    """Furniture parts overlap; a flipped open part would cancel the closed one it overlaps
    (w = 1 - 1). trimesh.repair.fix_normals(multibody=True) leaves open bodies as they are
    and gets this wrong; orienting every patch outward does not."""
    e, c = (0.4, 0.4, 0.4), (0.17, 0.0, 0.0)  # coplanar walls, no identical triangles (see below)
    a, b = box(e), box(e, c)
    top = np.isclose(b.triangles_center[:, 2], 0.2)
    parts = trimesh.Trimesh(np.concatenate([a.vertices, b.vertices]),
                            np.concatenate([a.faces, b.faces[~top][:, ::-1] + len(a.vertices)]), process=False)
    truth = in_box(Q, e) | in_box(Q, e, c)
    far = np.minimum(box_distance(Q, e), box_distance(Q, e, c)) > 0.01
    assert (inside(parts, Q)[far] == truth[far]).all()
    # closed overlapping parts (procedural shapes): inside both is inside once
    two = trimesh.util.concatenate([a, a.copy().apply_translation([0.2, 0, 0])])
    assert inside(two, np.array([[0.1, 0, 0], [0.7, 0, 0]])).tolist() == [True, False]


def test_empty_mesh_has_no_inside():
    assert not inside(trimesh.Trimesh(), Q[:5]).any()


# -- the ground truth `render` writes -------------------------------------------------------

SMALL = {"surface_points": 2000, "sdf_points": 4000, "occ_points": 6000}


@pytest.mark.parametrize("shape", ["sphere", "open box", "two boxes"])
def test_ground_truth_signs_do_not_depend_on_winding(shape):
    if shape == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
        truth, dist = (lambda p: np.linalg.norm(p, axis=1) < 0.3), (lambda p: np.abs(np.linalg.norm(p, axis=1) - 0.3))
    elif shape == "open box":
        full = box((0.6, 0.4, 0.5))
        mesh = trimesh.Trimesh(full.vertices, full.faces[~np.isclose(full.triangles_center[:, 2], 0.25)], process=False)
        truth, dist = (lambda p: in_box(p, (0.6, 0.4, 0.5))), (lambda p: box_distance(p, (0.6, 0.4, 0.5)))
    else:
        e, c1, c2 = (0.3, 0.3, 0.3), (-0.15, -0.15, 0.0), (0.15, 0.15, 0.0)
        mesh = trimesh.util.concatenate([box(e, c1), box(e, c2)])
        truth = lambda p: in_box(p, e, c1) | in_box(p, e, c2)  # noqa: E731
        dist = lambda p: np.minimum(box_distance(p, e, c1), box_distance(p, e, c2))  # noqa: E731
    ref = groundtruth.compute(mesh, seed=5, **SMALL)
    for name, m in variants(mesh).items():
        gt = groundtruth.compute(m, seed=5, **SMALL)
        occ, labels = gt["occ_points"].astype(np.float64), gt["occ_labels"].astype(bool)
        far = dist(occ) > 0.01
        assert (labels[far] == truth(occ)[far]).all(), name
        if name != "mixed soup":  # same faces in another winding: the very same labels
            np.testing.assert_array_equal(gt["occ_points"], ref["occ_points"])
            np.testing.assert_array_equal(gt["occ_labels"], ref["occ_labels"])
        xyz, sdf = gt["sdf_samples"][:, :3].astype(np.float64), gt["sdf_samples"][:, 3]
        far = dist(xyz) > 0.01
        assert ((sdf < 0)[far] == truth(xyz)[far]).all(), name
        if shape == "sphere":  # the stored normals point outward whatever the file's winding
            n, p = gt["surface_normals"], gt["surface_points"]
            assert (np.einsum("ij,ij->i", n, p) > 0).all(), name

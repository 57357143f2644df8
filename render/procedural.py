"""Seeded parametric furniture from trimesh primitives: chairs, tables, sofas, lamps.

For tests and machines without the Sweet Home 3D catalogs. Parts are separate closed
meshes concatenated (not boolean-unioned); they overlap, which the generalised winding
number used for the ground truth handles (a point inside two parts has winding number 2,
still "inside"). y is up, the front faces +z, the floor is y = 0.
"""

from __future__ import annotations

import numpy as np
import trimesh

CATEGORIES = ("chair", "table", "sofa", "lamp")

_WOOD = [(139, 90, 43), (181, 136, 99), (92, 64, 51), (205, 170, 125), (60, 40, 30)]
_FABRIC = [(70, 90, 140), (150, 40, 40), (90, 120, 80), (200, 190, 170), (60, 60, 60), (180, 120, 60)]
_METAL = [(180, 180, 185), (40, 40, 45), (200, 170, 90)]


def _box(size, center, color) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=size)
    m.apply_translation(center)
    return _paint(m, color)


def _cylinder(radius, height, center, color, sections=24) -> trimesh.Trimesh:
    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z axis -> y axis
    m.apply_translation(center)
    return _paint(m, color)


def _frustum(r_bottom, r_top, height, center, color, sections=32) -> trimesh.Trimesh:
    # A closed truncated cone revolved about y (trimesh revolves about z, then we turn it).
    profile = np.array([[0, 0], [r_bottom, 0], [r_top, height], [0, height]], dtype=float)
    m = trimesh.creation.revolve(profile, sections=sections)
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    m.apply_translation(np.asarray(center) - [0, height / 2, 0])
    return _paint(m, color)


def _paint(m: trimesh.Trimesh, color) -> trimesh.Trimesh:
    m.visual = trimesh.visual.ColorVisuals(m, face_colors=np.tile([*color, 255], (len(m.faces), 1)).astype(np.uint8))
    return m


def _pick(rng: np.random.Generator, palette):
    return palette[int(rng.integers(len(palette)))]


def chair(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    w, d = rng.uniform(0.40, 0.60), rng.uniform(0.40, 0.55)
    seat_h, seat_t = rng.uniform(0.40, 0.50), rng.uniform(0.03, 0.08)
    leg, back_h = rng.uniform(0.025, 0.05), rng.uniform(0.35, 0.60)
    wood, fabric = _pick(rng, _WOOD), _pick(rng, _FABRIC)
    parts = [_box([w, seat_t, d], [0, seat_h - seat_t / 2, 0], fabric)]
    for sx in (-1, 1):
        for sz in (-1, 1):
            lh = seat_h - seat_t
            parts.append(_box([leg, lh, leg], [sx * (w / 2 - leg / 2), lh / 2, sz * (d / 2 - leg / 2)], wood))
    back_t = rng.uniform(0.03, 0.06)
    zb = -d / 2 + back_t / 2
    if rng.random() < 0.5:
        parts.append(_box([w, back_h, back_t], [0, seat_h + back_h / 2, zb], fabric))
    else:  # two posts and slats
        for sx in (-1, 1):
            parts.append(_box([leg, back_h, back_t], [sx * (w / 2 - leg / 2), seat_h + back_h / 2, zb], wood))
        n = int(rng.integers(2, 5))
        for i in range(n):
            y = seat_h + back_h * (i + 1) / (n + 1)
            parts.append(_box([w - 2 * leg, 0.04, back_t * 0.8], [0, y, zb], wood))
        parts.append(_box([w, 0.05, back_t], [0, seat_h + back_h - 0.025, zb], wood))
    if rng.random() < 0.35:  # arms
        for sx in (-1, 1):
            parts.append(_box([0.05, 0.04, d], [sx * (w / 2 - 0.025), seat_h + 0.22, 0], wood))
            parts.append(_box([0.04, 0.22, 0.04], [sx * (w / 2 - 0.025), seat_h + 0.11, d / 2 - 0.04], wood))
    return parts


def table(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    h, top_t = rng.uniform(0.45, 0.80), rng.uniform(0.03, 0.07)
    wood, metal = _pick(rng, _WOOD), _pick(rng, _METAL)
    parts = []
    if rng.random() < 0.35:  # round top on a pedestal
        r = rng.uniform(0.35, 0.6)
        parts.append(_cylinder(r, top_t, [0, h - top_t / 2, 0], wood, sections=40))
        parts.append(_cylinder(rng.uniform(0.03, 0.07), h - top_t, [0, (h - top_t) / 2, 0], metal))
        parts.append(_cylinder(r * rng.uniform(0.4, 0.6), 0.03, [0, 0.015, 0], metal, sections=40))
        return parts
    w, d = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9)
    leg = rng.uniform(0.04, 0.08)
    parts.append(_box([w, top_t, d], [0, h - top_t / 2, 0], wood))
    inset = rng.uniform(0.0, 0.08)
    lh = h - top_t
    for sx in (-1, 1):
        for sz in (-1, 1):
            parts.append(_box([leg, lh, leg], [sx * (w / 2 - leg / 2 - inset), lh / 2, sz * (d / 2 - leg / 2 - inset)], wood))
    if rng.random() < 0.5:  # apron
        parts.append(_box([w - 2 * inset, 0.08, d - 2 * inset], [0, h - top_t - 0.04, 0], wood))
    return parts


def sofa(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    w, d = rng.uniform(1.4, 2.2), rng.uniform(0.75, 0.95)
    base_h, back_h, arm_w = rng.uniform(0.20, 0.30), rng.uniform(0.35, 0.55), rng.uniform(0.10, 0.22)
    arm_h = base_h + rng.uniform(0.12, 0.25)
    fabric, wood = _pick(rng, _FABRIC), _pick(rng, _WOOD)
    feet = 0.06
    parts = [_box([w, base_h, d], [0, feet + base_h / 2, 0], fabric)]
    parts.append(_box([w, back_h, 0.18], [0, feet + base_h + back_h / 2, -d / 2 + 0.09], fabric))
    for sx in (-1, 1):
        parts.append(_box([arm_w, arm_h, d], [sx * (w / 2 - arm_w / 2), feet + arm_h / 2, 0], fabric))
        for sz in (-1, 1):
            parts.append(_box([0.05, feet, 0.05], [sx * (w / 2 - 0.05), feet / 2, sz * (d / 2 - 0.05)], wood))
    n = int(rng.integers(2, 4))
    cw = (w - 2 * arm_w) / n
    for i in range(n):  # seat cushions
        x = -w / 2 + arm_w + cw * (i + 0.5)
        parts.append(_box([cw * 0.96, 0.12, d - 0.2], [x, feet + base_h + 0.06, 0.09], fabric))
    return parts


def lamp(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    h = rng.uniform(0.5, 1.6)
    metal, shade = _pick(rng, _METAL), _pick(rng, _FABRIC)
    base_r = rng.uniform(0.10, 0.20)
    parts = [_cylinder(base_r, 0.03, [0, 0.015, 0], metal, sections=32)]
    pole_r = h * rng.uniform(0.02, 0.035)
    parts.append(_cylinder(pole_r, h, [0, h / 2, 0], metal, sections=12))
    sh = rng.uniform(0.18, 0.35)
    rb = rng.uniform(0.15, 0.30)
    rt = rb * rng.uniform(0.4, 0.9)
    parts.append(_frustum(rb, rt, sh, [0, h + sh * 0.3, 0], shade))
    return parts


BUILDERS = {"chair": chair, "table": table, "sofa": sofa, "lamp": lamp}


def make_shape(category: str, seed: int) -> trimesh.Trimesh:
    """One seeded shape of ``category`` as a single mesh with per-face colours."""
    parts = BUILDERS[category](np.random.default_rng(seed))
    return trimesh.util.concatenate(parts)

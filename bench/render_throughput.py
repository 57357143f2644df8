"""Render throughput per worker (one process, one renderer) at 224² on a ~10k-face mesh.

Prints views/s for: colour + depth only; colour + depth + normal pass (what the stage
draws); and the full per-view path (camera sampling with border redraws, rendering,
PNG/NPY/JSON encoding, writing a shard), then where the CPU time of that path goes.
Target: >= 100 views per CPU-second.

llvmpipe (OSMesa) runs with LP_NUM_THREADS=0 here, as in the stage's worker processes
(render/api.py): rasterising in the calling thread, no per-core helper threads. Pass
LP_NUM_THREADS=N in the environment to measure otherwise.

    .venv/bin/python bench/render_throughput.py [--views 72] [--size 224] [--mesh torus|sh3d|FILE.obj]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("LP_NUM_THREADS", "0")  # what render/api.py's workers use

import numpy as np  # noqa: E402
import trimesh  # noqa: E402


def _mesh(kind: str):
    from render.meshes import load_obj, normalize

    if kind == "torus":  # 100 x 50 sections x 2 = 10,000 faces, with per-face colours
        m = trimesh.creation.torus(major_radius=0.4, minor_radius=0.12, major_sections=100, minor_sections=50)
        m.visual = trimesh.visual.ColorVisuals(m, face_colors=np.tile([180, 120, 60, 255], (len(m.faces), 1)))
        return "torus (procedural)", normalize([m])
    if kind == "sh3d":  # the Sweet Home 3D chair whose face count is closest to 10k
        from render.sources import list_shapes, load

        best = None
        with tempfile.TemporaryDirectory() as cache:
            for ref in list_shapes("sweethome3d", "chair", 0, 0):
                try:
                    shape = load(ref, Path(cache))
                except Exception:  # noqa: BLE001 - skip what the stage would skip
                    continue
                if best is None or abs(shape.num_faces - 10_000) < abs(best[1].num_faces - 10_000):
                    best = (ref.model_id, shape)
        return f"{best[0]} (Sweet Home 3D)", best[1]
    return Path(kind).name, normalize(load_obj(Path(kind)))


def _report(label: str, views: int, wall: float, cpu: float) -> None:
    # CPU time counts every thread of this process (llvmpipe rasterises in threads), so
    # views per CPU-second is the per-core figure, whatever else the machine is running.
    print(f"{label}: {views / wall:6.1f} views/s wall ({1000 * wall / views:5.1f} ms/view), "
          f"{views / cpu:6.1f} views per CPU-second")


class _Timer:
    """Wraps a function and adds up the CPU time spent in it, per label."""

    def __init__(self):
        self.cpu: dict[str, float] = {}

    def wrap(self, fn, label_of):
        def timed(*args, **kwargs):
            c = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                label = label_of(*args, **kwargs)
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - c
        return timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=72)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mesh", default="torus")
    a = p.parse_args()

    import webdataset  # noqa: F401 - once per process (it imports torch): start-up, not a per-view cost

    from cdc_aug.shards import ShardStore
    from render.api import RenderConfig, _render_shape, get_renderer
    from render.cameras import sample_view
    from render.renderer import Renderer

    name, shape = _mesh(a.mesh)
    print(f"mesh: {name}, {shape.num_faces} faces; {a.views} views at {a.size}x{a.size}; "
          f"PYOPENGL_PLATFORM={os.environ['PYOPENGL_PLATFORM']}, LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', '-')}; "
          f"1 process; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    cams = [sample_view(rng, i, a.views, shape.diagonal, a.size, 1.3)[0] for i in range(a.views)]
    r = Renderer(a.size)
    for normals in (False, True):
        r.load(shape, normals=normals)
        r.render(cams[0])  # upload and shader compilation
        t, c = time.perf_counter(), time.process_time()
        for cam in cams:
            r.render(cam)
        label = "colour+depth+normals" if normals else "colour+depth        "
        _report(f"render only, {label}", a.views, time.perf_counter() - t, time.process_time() - c)
    r.close()

    # The stage's own per-shape path, ground truth excluded (it is computed once per shape).
    import render.api as api
    from render import groundtruth, sources
    from render import renderer as renderer_mod

    cfg = RenderConfig(source="procedural", views=a.views, size=a.size).__dict__
    timer = _Timer()
    with tempfile.TemporaryDirectory() as tmp:
        real_load, real_complete = sources.load, groundtruth.is_complete
        real_encode, real_normals = api.encode_sample, renderer_mod._camera_normals
        sources.load = lambda ref, cache: shape
        groundtruth.is_complete = lambda path, params=None: True
        try:
            ref = sources.ShapeRef("procedural", "03001627", "chair", "bench")
            pyr = get_renderer(a.size)._r
            _render_shape(ref, cfg, Path(tmp), Path(tmp))  # warm-up
            # CPU time per part of the path: the two pyrender passes, encoding, the rest.
            real_pass = pyr.render
            pyr.render = timer.wrap(real_pass, lambda scene, flags=0, **_: "normal pass (pyrender FLAT)" if flags
                                    else "colour + depth pass (pyrender, lit)")
            api.encode_sample = timer.wrap(real_encode, lambda s: "encode: 3 PNG + NPY + 2 JSON")
            renderer_mod._camera_normals = timer.wrap(real_normals, lambda *a_: "camera normals (numpy)")
            t, c = time.perf_counter(), time.process_time()
            samples, _ = _render_shape(ref, cfg, Path(tmp), Path(tmp))
            path_wall, path_cpu = time.perf_counter() - t, time.process_time() - c
            _report("render + encode (stage path)     ", a.views, path_wall, path_cpu)
            c2 = time.process_time()
            ShardStore(Path(tmp) / "out", "renders", "render").write(0, samples)
            write_cpu = time.process_time() - c2
            _report("render + encode + write shard    ", a.views, time.perf_counter() - t, time.process_time() - c)
        finally:
            sources.load, groundtruth.is_complete = real_load, real_complete
            api.encode_sample = real_encode
            renderer_mod._camera_normals = real_normals
        size = sum(len(v) for s in samples for k, v in s.items() if not k.startswith("__"))
    parts = dict(timer.cpu)
    parts["write shard (tar + sha256 + fsync)"] = write_cpu
    parts["rest: cameras, border fits, mask/rgba, Python"] = path_cpu - sum(timer.cpu.values())
    total = path_cpu + write_cpu
    print(f"where the CPU time goes (ms per view, {a.views} views):")
    for label, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<46} {1000 * sec / a.views:6.2f}  {100 * sec / total:5.1f} %")
    print(f"shard bytes: {size / a.views / 1024:.0f} KiB/view")
    t = time.perf_counter()
    groundtruth.compute(shape.merged(), 0)
    print(f"ground truth per shape (32k SDF, 100k surface, 100k occupancy): {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()

"""Render throughput per worker (one process, one renderer) at 224² on a ~10k-face mesh.

Prints views/s for: colour + depth only; colour + depth + normal pass (what the stage
draws), through pyrender's own path (before) and through ``Renderer`` (now); the full
per-view path (camera sampling with border redraws, rendering, PNG/NPY/JSON encoding,
writing a shard) before and now, alternated in one run; where the CPU time of that
path goes now; and Pillow's PNG encoder against ``encode_png`` on the path's own
arrays. Target: >= 100 views per CPU-second.

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


def _pillow_png(array: np.ndarray) -> bytes:
    """The PNG encoder before: Pillow at zlib level 1 (it searches a filter per row)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _masked_encode_normals(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """render.renderer.encode_normals before: boolean-indexed gather and scatter."""
    out = np.zeros(normal.shape, dtype=np.uint8)
    out[mask] = np.clip(np.round((normal[mask] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return out


def _rss_mib() -> float:
    """Resident memory now (Linux), to show what a renderer keeps per view."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def _render_only(cls, shape, cams, normals: bool) -> tuple[float, float, int, float]:
    r = cls(cams[0].size)
    r.load(shape, normals=normals)
    r.render(cams[0])  # upload and shader compilation
    rss = _rss_mib()
    t, c = time.perf_counter(), time.process_time()
    for cam in cams:
        r.render(cam)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    grown = _rss_mib() - rss
    programs = len(r._r._renderer._program_cache._program_cache)
    r.close()
    return wall, cpu, programs, grown


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=72)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mesh", default="torus")
    p.add_argument("--rounds", type=int, default=2, help="before/after pairs of the stage path, alternated")
    a = p.parse_args()

    import webdataset  # noqa: F401 - once per process (it imports torch): start-up, not a per-view cost

    import cdc_aug.samples as samples_mod
    from cdc_aug.shards import ShardStore
    from render.api import _RENDERERS, RenderConfig, _render_shape, get_renderer
    from render.cameras import sample_view
    from render.renderer import PyrenderPathRenderer, Renderer

    name, shape = _mesh(a.mesh)
    print(f"mesh: {name}, {shape.num_faces} faces; {a.views} views at {a.size}x{a.size}; "
          f"PYOPENGL_PLATFORM={os.environ['PYOPENGL_PLATFORM']}, LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', '-')}; "
          f"1 process; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    cams = [sample_view(rng, i, a.views, shape.diagonal, a.size, 1.3)[0] for i in range(a.views)]
    # before: pyrender's own path (its program cache misses on every view under PyOpenGL
    # 3.1.10 + OSMesa; colour and depth read back on both passes).
    for label, cls, normals in (("colour+depth, now              ", Renderer, False),
                                ("colour+depth+normals, before   ", PyrenderPathRenderer, True),
                                ("colour+depth+normals, now      ", Renderer, True)):
        wall, cpu, programs, grown = _render_only(cls, shape, cams, normals)
        _report(f"render only, {label}", a.views, wall, cpu)
        print(f"    shader programs compiled: {programs}; resident memory grew {grown:.0f} MiB over {a.views} views")

    # The stage's own per-shape path, ground truth excluded (it is computed once per shape).
    import render.api as api
    from render import groundtruth, sources
    from render import renderer as renderer_mod

    cfg = RenderConfig(source="procedural", views=a.views, size=a.size).__dict__
    ref = sources.ShapeRef("procedural", "03001627", "chair", "bench")
    real_load, real_complete = sources.load, groundtruth.is_complete
    real_png, real_enc_normals = samples_mod.ENCODERS["png"], renderer_mod.encode_normals
    sources.load = lambda ref, cache: shape
    groundtruth.is_complete = lambda path, params=None: True

    def use(before: bool) -> None:
        """Switch the stage path between the code before this change and now."""
        api.close_renderers()
        if before:
            _RENDERERS[a.size] = PyrenderPathRenderer(a.size)
        samples_mod.ENCODERS["png"] = _pillow_png if before else real_png
        renderer_mod.encode_normals = _masked_encode_normals if before else real_enc_normals

    def stage(tmp: Path) -> tuple[float, float, list]:
        t, c = time.perf_counter(), time.process_time()
        samples, _ = _render_shape(ref, cfg, tmp, tmp)
        ShardStore(tmp / "out", "renders", "render").write(0, samples)
        return time.perf_counter() - t, time.process_time() - c, samples

    print("stage path (render + encode + write shard), before = pyrender's own path, Pillow PNG, "
          "boolean-indexed normal encoding (camera/light caches on in both):")
    best: dict[bool, float] = {}
    sizes: dict[bool, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(a.rounds):
                for before in (True, False):
                    use(before)
                    _render_shape(ref, cfg, Path(tmp), Path(tmp))  # warm-up: upload, compile
                    wall, cpu, samples = stage(Path(tmp))
                    best[before] = min(best.get(before, cpu), cpu)
                    sizes[before] = sum(len(v) for s in samples for k, v in s.items() if not k.startswith("__"))
                    _report(f"  round {rnd + 1}, {'before' if before else 'now   '}", a.views, wall, cpu)
            print(f"  best of {a.rounds}: before {a.views / best[True]:.1f}, now {a.views / best[False]:.1f} views per "
                  f"CPU-second ({best[True] / best[False]:.2f}x); shard bytes {sizes[True] / a.views / 1024:.0f} -> "
                  f"{sizes[False] / a.views / 1024:.0f} KiB/view")

            # Where the CPU time of the path goes now.
            use(False)
            timer = _Timer()
            pyr = get_renderer(a.size)
            _render_shape(ref, cfg, Path(tmp), Path(tmp))  # warm-up
            real_draw, real_encode, real_normals = pyr._draw, api.encode_sample, renderer_mod._camera_normals
            pyr._draw = timer.wrap(real_draw, lambda flags, depth: "normal pass (pyrender FLAT, colour read)"
                                   if flags else "colour + depth pass (pyrender, lit)")
            api.encode_sample = timer.wrap(real_encode, lambda s: "encode: 3 PNG + NPY + 2 JSON")
            renderer_mod._camera_normals = timer.wrap(real_normals, lambda *a_: "camera normals (numpy)")
            try:
                t, c = time.perf_counter(), time.process_time()
                samples, _ = _render_shape(ref, cfg, Path(tmp), Path(tmp))
                path_cpu = time.process_time() - c
                c2 = time.process_time()
                ShardStore(Path(tmp) / "out", "renders", "render").write(0, samples)
                write_cpu = time.process_time() - c2
            finally:
                pyr._draw, api.encode_sample, renderer_mod._camera_normals = real_draw, real_encode, real_normals
    finally:
        sources.load, groundtruth.is_complete = real_load, real_complete
        use(False)
        api.close_renderers()
    parts = dict(timer.cpu)
    parts["write shard (tar + sha256 + fsync)"] = write_cpu
    parts["rest: cameras, border fits, mask/rgba, Python"] = path_cpu - sum(timer.cpu.values())
    total = path_cpu + write_cpu
    print(f"where the CPU time goes now (ms per view, {a.views} views, {a.views / total:.1f} views per CPU-second):")
    for label, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<46} {1000 * sec / a.views:6.2f}  {100 * sec / total:5.1f} %")
    _png_table(samples)
    t = time.perf_counter()
    groundtruth.compute(shape.merged(), 0)
    print(f"ground truth per shape (32k SDF, 100k surface, 100k occupancy): {time.perf_counter() - t:.2f} s")


def _png_table(samples: list[dict]) -> None:
    """Per PNG field of the stage's own output: Pillow (before) vs encode_png, CPU and bytes."""
    from cdc_aug.samples import decode_png, encode_png

    print("PNG encoding per field (ms per view, KiB), Pillow level 1 -> filter 0 + zlib level 1, same arrays:")
    for field in ("rgba.png", "mask.png", "normal.png"):
        arrays = [decode_png(s[field]) for s in samples]
        row = []
        for enc in (_pillow_png, encode_png):
            c, n = time.process_time(), 0
            for arr in arrays:
                n += len(enc(arr))
            row.append((1000 * (time.process_time() - c) / len(arrays), n / len(arrays) / 1024))
        assert all(np.array_equal(decode_png(encode_png(x)), x) for x in arrays)
        print(f"  {field:<11} {row[0][0]:5.2f} ms {row[0][1]:5.1f} KiB -> {row[1][0]:5.2f} ms {row[1][1]:5.1f} KiB")


if __name__ == "__main__":
    main()

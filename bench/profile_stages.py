"""Where the seconds of the eval and train stages go, printed as one table.

Each row is one piece of work, timed by calling the code the stage calls (wall and CPU
seconds, per item and per stage run). Rows:

- start-up: a bare interpreter, ``import torch``, ``import lightning``, the eval and train
  entry modules, each in a fresh process (what every stage subprocess pays once);
- eval, once per process: model load, offscreen renderer creation;
- eval, once per shape: the shape file's metric datasets and the KD-tree of its points;
- eval, per view: sample decode, image encoder, SDF grid (coarse to fine and dense),
  marching cubes, surface sampling, KD-tree queries, inside test (winding number),
  silhouette render;
- train, per sample and per step: tar read + PNG decode, h5 SDF read (cold and cached),
  point sampling, collation; forward, losses, backward, optimiser step; one validation
  mesh.

    .venv/bin/python bench/profile_stages.py --data data/experiments/smoke/renders \\
        --ckpt runs/smoke/svr-clean/checkpoints/last.ckpt [--resolution 48 --points 20000]

The defaults are the smoke experiment's paths and eval settings. On a shared machine read
the CPU column: wall time there includes waiting for the other processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS: list[tuple[str, str, float, float, int]] = []  # section, piece, wall, cpu, count


class timed:
    """Adds one measurement (or ``count`` items) to a row."""

    def __init__(self, section: str, piece: str, count: int = 1):
        self.section, self.piece, self.count = section, piece, count

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        ROWS.append((self.section, self.piece, time.perf_counter() - self.w, time.process_time() - self.c,
                     self.count))


def startup() -> None:
    """Fresh interpreters: what each stage subprocess pays before its first item."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for piece, code in [("python itself", "pass"), ("import torch", "import torch"),
                        ("import lightning", "import lightning"),
                        ("eval entry (cdc_aug eval + inference)", "import eval.evaluate, train_svr.inference"),
                        ("train entry (train_svr.cli)", "import train_svr.cli"),
                        ("pyrender + OSMesa context", "from render.renderer import Renderer; Renderer(64).close()")]:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", "import time,resource;" + code + ";"
                              "r=resource.getrusage(resource.RUSAGE_SELF);print(r.ru_utime+r.ru_stime)"],
                             env=env, capture_output=True, text=True, check=True)
        ROWS.append(("start-up", piece, time.perf_counter() - t, float(out.stdout.split()[-1]), 1))


def eval_stage(data: Path, ckpt: Path, resolution: int, points: int, views: list[int], split: str) -> None:
    import numpy as np
    import torch

    from cdc_aug.runinfo import derive_seed
    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import iter_tar_samples
    from eval.evaluate import metric_ground_truth, select
    from eval.metrics import inside, iou, point_metrics, sample_mesh
    from eval.silhouette import Silhouettes, silhouette_iou
    from train_svr.data import camera_tensors, image_tensor, input_image
    from train_svr.inference import default_chunk, load_model, mesh_from_sdf, sdf_grid

    with timed("eval once", "model load (checkpoint -> module)"):
        model = load_model(ckpt)
    sel = select(data, split, views)
    gt = metric_ground_truth(sel.shapes_root)
    size = int(model.hparams.image_size)
    chunk = default_chunk("cpu", model)
    sil = Silhouettes()
    with timed("eval once", "offscreen renderer creation"):
        sil.renderer(size)
    sec = f"eval per view ({resolution}^3, {points // 1000}k points)"
    for path, wanted in sel.items.items():
        want = set(wanted)
        it = iter_tar_samples(path)
        while True:
            with timed(sec, "tar read + PNG decode"):
                raw = next(it, None)
                while raw is not None and raw["__key__"] not in want:
                    raw = next(it, None)
                if raw is not None:
                    s = decode_sample(raw, ["image.png", "rgba.png", "mask.png", "camera.json", "meta.json"])
            if raw is None:
                ROWS.pop()
                break
            key = raw["__key__"]
            synset, model_id = key.rsplit("_", 1)[0].split("_", 1)
            fresh = f"{synset}_{model_id}" not in gt._cache
            with timed("eval per shape", "h5 metric datasets + KD-tree build"):
                g = gt.get(synset, model_id)
            if not fresh:
                ROWS.pop()
            image = input_image(s)
            K, RT = camera_tensors(s["camera.json"], image.shape[:2], size)
            with timed(sec, "image encoder (ResNet + detail maps)"), torch.inference_mode():
                latent, maps = model.net.encode(image_tensor(image, size)[None])
            with timed(sec, "SDF grid, coarse to fine"):
                sdf = sdf_grid(model, latent, maps, K[None], RT[None], resolution, chunk, coarse_to_fine=True)
            with timed(sec, "SDF grid, dense (not used; for comparison)"):
                sdf_grid(model, latent, maps, K[None], RT[None], resolution, chunk, coarse_to_fine=False)
            with timed(sec, "marching cubes + Trimesh"):
                mesh = mesh_from_sdf(sdf)
            if len(mesh.faces) == 0:
                continue
            with timed(sec, "surface sampling"):
                pts, normals = sample_mesh(mesh, points, derive_seed(0, key) % (2**31))
            with timed(sec, "KD-tree queries (Chamfer, F-score, normals)"):
                point_metrics(pts, normals, g["surface_points"], g["surface_normals"], gt_tree=g["tree"])
            with timed(sec, "inside test (winding number) for 3D IoU"):
                iou(inside(mesh, g["occ_points"]), np.asarray(g["occ_labels"]) > 0)
            with timed(sec, "silhouette render for 2D IoU"):
                silhouette_iou(mesh, s["camera.json"], s["mask.png"], sil)
    sil.close()


def train_stage(data: Path, batches: int) -> None:
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    from cdc_aug.samples import decode_field
    from cdc_aug.shards import iter_tar_samples
    from train_svr.data import balanced_points, ground_truth, make_example, open_shard_set
    from train_svr.inference import mesh_from_batch
    from train_svr.losses import svr_losses
    from train_svr.module import SVRModule

    sset = open_shard_set(data, "train")
    gt = ground_truth(sset.shapes)
    rng = np.random.default_rng(0)
    sec = "train per sample (64 px, 1024 points)"
    examples, seen = [], set()
    it = iter_tar_samples(sset.shards[0])
    n = batches * 8
    for _ in range(n):
        with timed(sec, "tar read"):
            raw = next(it)
        meta = decode_field("meta.json", raw["meta.json"])
        shape = (meta["synset"], meta["model_id"])
        with timed("train per shape", "h5 SDF samples read (first time, then cached)"):
            g = gt.get(*shape)
        if shape in seen:
            ROWS.pop()
        seen.add(shape)
        with timed(sec, "point sampling (balanced)"):
            balanced_points(g["sdf_samples"], 1024, rng, (g["inside"], g["outside"]))
        with timed(sec, "make_example (PNG decode, resize, camera, points)"):
            examples.append(make_example(raw, gt, 64, 1024, rng))
    with timed("train per step (batch 8)", "collation", count=batches):
        batch_list = [default_collate(examples[i * 8:(i + 1) * 8]) for i in range(batches)]
    model = SVRModule(lr=1e-3, image_size=64, encoder_width=16, latent_dim=64, decoder_width=32,
                      detail_channels=16).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for b in batch_list:
        with timed("train per step (batch 8)", "forward + losses"):
            out = model.net(b["image"], b["points"], b["K"], b["RT"])
            loss = svr_losses(out, b)["loss"]
        with timed("train per step (batch 8)", "backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with timed("train per step (batch 8)", "Adam step"):
            opt.step()
    model.eval()
    one = {k: v[:1] for k, v in batch_list[0].items() if torch.is_tensor(v)}
    with timed("train per validation shape", "mesh at 24^3 (tiny.yaml val_resolution)"):
        mesh_from_batch(model, one, 24, 32768)


def table() -> str:
    """One block per stage (in order of first appearance), its pieces and CPU shares."""
    stages: dict[str, dict[str, list[tuple[float, float, int]]]] = {}
    for sec, piece, w, c, k in ROWS:
        stages.setdefault(sec, {}).setdefault(piece, []).append((w, c, k))
    lines = [f"{'stage':<38} {'piece':<52} {'n':>4} {'wall s/item':>12} {'cpu s/item':>11} {'share':>6}"]
    for sec, pieces in stages.items():
        per = {p: (sum(x[0] for x in v) / sum(x[2] for x in v), sum(x[1] for x in v) / sum(x[2] for x in v),
                   sum(x[2] for x in v)) for p, v in pieces.items()}
        total = sum(c for p, (_, c, _) in per.items() if "not used" not in p)
        for i, (p, (w, c, n)) in enumerate(per.items()):
            share = "" if "not used" in p else f"{100 * c / max(total, 1e-9):5.1f}%"
            lines.append(f"{sec if i == 0 else '':<38} {p:<52} {n:4d} {w:12.4f} {c:11.4f} {share:>6}")
        lines.append(f"{'':<38} {'total per item':<52} {'':>4} {'':>12} {total:11.4f}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/experiments/smoke/renders", help="a render directory")
    ap.add_argument("--ckpt", default="runs/smoke/svr-clean/checkpoints/last.ckpt", help="a tiny-model checkpoint")
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--views", default="0,9,18,27", help="test views (default: the smoke experiment's)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batches", type=int, default=8, help="training batches timed")
    ap.add_argument("--only", choices=["startup", "eval", "train"], action="append",
                    help="profile only these sections (repeatable)")
    args = ap.parse_args()
    import torch

    only = set(args.only or ["startup", "eval", "train"])
    print(f"cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}")
    if "startup" in only:
        startup()
    if "eval" in only:
        eval_stage(Path(args.data), Path(args.ckpt), args.resolution, args.points,
                   [int(v) for v in args.views.split(",")], args.split)
    if "train" in only:
        train_stage(Path(args.data), args.batches)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cdc_aug.errors import UserError
from cdc_aug.settings import index_list, setting

HELP = ("{help}. Writes per_view.csv, summary.json (per category and overall), config.yaml and samples/ "
        "(inputs next to renders of their reconstructions) into --out. Real photographs (pix3d:ROOT, images:DIR; "
        "see eval/real.py) use --camera, --camera-ckpt, --categories, --keep-occluded, --pix3d-split, "
        "--crop-size and --cache-dir.")


@dataclass(kw_only=True)
class EvalSettings:
    ckpt: str | None = setting(None, "a `cdc-aug train` checkpoint (.ckpt; required)")
    data: list[str] = setting(factory=list, nargs="+", help="a render directory or a generate run (index.json, "
                              "splits.json), pix3d:ROOT (a Pix3D copy) or images:DIR (photos + NAME_mask.png); "
                              "several: the model is loaded once and each is evaluated into the matching --out")
    out: list[str] = setting(factory=list, nargs="+", help="output directory, one per --data")
    split: str = setting("test", "split of splits.json to evaluate")
    views: list[int] | None = setting(None, "comma-separated view indices (default: every view)", type=index_list)
    resolution: int = setting(128, "marching-cubes grid")
    chunk: int | None = setting(None, "SDF points per forward pass (default: about 1 MiB of activations on CPU, 1024 at the smoke width; 65536 on GPU)")
    dense: bool = setting(False, "evaluate every grid point instead of refining coarse to fine (same mesh, slower)")
    points: int = setting(100_000, "points sampled on each mesh")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")
    save_meshes: int = setting(4, "views whose input, reconstruction render and mesh are kept")
    seed: int = setting(0, "surface sampling seed")
    progress: bool = setting(True, "no progress bar", flag="--no-progress")
    camera: Literal["gt", "predicted"] = setting("gt", "camera to reconstruct with: the data's own (gt) or the "
                                                       "estimator's (predicted); data without cameras (images:DIR) "
                                                       "always use the estimator")
    camera_ckpt: str | None = setting(None, "a `cdc-aug train-camera` checkpoint, for predicted cameras")
    categories: str | None = setting(None, "Pix3D categories to evaluate, comma-separated (default: all)")
    keep_occluded: bool = setting(False, "keep Pix3D images marked truncated, occluded or slightly occluded "
                                         "(default: excluded)")
    pix3d_split: str | None = setting(None, "only the images of a Mesh R-CNN Pix3D split file (e.g. "
                                            "pix3d_s1_test.json; add --keep-occluded to match its protocol)")
    crop_size: int = setting(224, "side of the square object crops")
    cache_dir: str | None = setting(None, "where converted real data and Pix3D ground truth are kept "
                                          "(default: ROOT/.cdc-aug)")


def settings_class():
    return EvalSettings


def run(args: EvalSettings) -> int:
    for name in ("ckpt", "data", "out"):
        if not getattr(args, name):
            raise UserError(f"--{name} is required (on the command line or in --config)")
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise UserError(f"--ckpt: {ckpt} does not exist")
    if args.resolution < 8:
        raise UserError(f"--resolution: must be >= 8, got {args.resolution}")
    if args.chunk is not None and args.chunk < 1:
        raise UserError(f"--chunk: must be >= 1, got {args.chunk}")
    if args.save_meshes < 0:
        raise UserError(f"--save-meshes: must be >= 0, got {args.save_meshes}")
    views = args.views

    from eval.evaluate import domain_of, evaluate, select
    from eval.identity import checkpoint_identity

    if len(args.data) != len(args.out):
        raise UserError(f"--out: {len(args.out)} directories for {len(args.data)} --data directories")
    # Every input checked (real data converted) before the model is loaded and the first
    # view is reconstructed.
    sources = [prepare_data(d, args) for d in args.data]
    cameras, data_views = [], []
    for data in sources:
        # --views picks render views; a real photo is one view of its own
        data_views.append(None if is_real(data) else views)
        sel = select(data, args.split, data_views[-1])
        cameras.append("predicted" if args.camera == "predicted" or sel.index.get("cameras") is False else "gt")
        if cameras[-1] == "predicted" and not args.camera_ckpt:
            raise UserError(f"--camera-ckpt: {data} has no cameras" if args.camera == "gt" else
                            "--camera-ckpt: required with --camera predicted (a `cdc-aug train-camera` checkpoint)")

    from cdc_aug.device import resolve_device
    from train_svr.inference import load_model, reconstruct

    device = str(resolve_device(args.device))
    model = load_model(ckpt, device=device)
    estimator = None
    if "predicted" in cameras:
        from train_svr.camera import load_estimator

        estimator = load_estimator(args.camera_ckpt, device=device)

    def reconstruct_fn(image, camera):
        return reconstruct(model, image, camera, resolution=args.resolution, chunk=args.chunk,
                           coarse_to_fine=not args.dense)

    config = {"ckpt": str(ckpt.resolve()), "resolution": args.resolution, "chunk": args.chunk, "device": device,
              "dense": args.dense}
    identity = {**checkpoint_identity(ckpt), "resolution": args.resolution}
    for spec, data, out, cam, dviews in zip(args.data, sources, args.out, cameras, data_views):
        extra, camera_fn = source_identity(spec, data), None
        if cam == "predicted":
            sel = select(data, args.split, dviews)
            preds, errors = predict_cameras(estimator, sel)
            camera_fn = lambda key, image, stored, preds=preds: preds[key]  # noqa: E731
            extra.update(camera_ckpt=str(Path(args.camera_ckpt).resolve()), **errors)
            if sel.index.get("cameras", True):  # a domain with cameras seen through predicted ones is another test
                extra["domain"] = f"{domain_of(sel.index)['domain']}, predicted camera"
        summary = evaluate(data, reconstruct_fn, out, split=args.split, views=dviews, n_points=args.points,
                           save_meshes=args.save_meshes, progress=args.progress, seed=args.seed,
                           identity={**identity, **extra, "camera": cam},
                           config={**config, "data": spec, "camera": cam, "camera_ckpt": args.camera_ckpt},
                           camera_fn=camera_fn)
        o = summary["overall"]
        scores = (f"chamfer_l1 {o['chamfer_l1']:.4f}  fscore@0.01 {o['fscore@0.01']:.3f}  normal_consistency "
                  f"{o['normal_consistency']:.3f}  iou_3d {o['iou_3d']:.3f}  " if o["chamfer_l1"] is not None else "")
        notes = f", {summary['n_skipped']} skipped" if summary.get("n_skipped") else ""
        if cam == "predicted" or summary.get("real"):
            notes += f", {cam} camera"
        print(f"{summary['model']} on {summary['domain']} ({summary['split']}, {o['n_views']} views of "
              f"{o['n_shapes']} shapes{notes}): {scores}iou_2d {o['iou_2d']:.3f}")
        if "camera_rot_err_deg" in summary:
            print(f"camera estimator on {summary['domain']}: rotation error {summary['camera_rot_err_deg']:.1f} deg "
                  f"(median {summary['camera_rot_err_deg_median']:.1f}), translation error "
                  f"{summary['camera_trans_err']:.3f}")
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0


def prepare_data(spec: str, args: EvalSettings) -> Path:
    """The stage directory of one --data value: itself, or real data converted (eval.real)."""
    from eval.real import parse_data

    kind, path = parse_data(spec)
    if kind == "pix3d":
        from eval.pix3d import prepare

        return prepare(path, args.cache_dir, args.categories, args.crop_size, args.keep_occluded, args.seed,
                       progress=args.progress, split_file=args.pix3d_split)
    if args.categories and not any(parse_data(d)[0] == "pix3d" for d in args.data):
        raise UserError("--categories: only applies to pix3d:ROOT data")
    if kind == "images":
        from eval.photos import prepare

        return prepare(path, args.cache_dir, args.crop_size, progress=args.progress)
    return path


def is_real(data: Path) -> bool:
    """True for a stage directory converted from real photographs."""
    from cdc_aug.shards import read_index

    return bool(read_index(data).get("real"))


def source_identity(spec: str, data: Path) -> dict:
    """summary.json entries saying what a --data value was: ``real`` and, for real data,
    its source and the items skipped in converting it."""
    from cdc_aug.shards import read_index
    from eval.real import skipped

    index = read_index(data)
    if not index.get("real"):
        return {"real": False}
    return {"real": True, "source": spec, "excluded": index.get("excluded"), **skipped(data)}


def predict_cameras(estimator, sel) -> tuple[dict, dict]:
    """The estimator's camera for every selected view, and its errors against the stored
    cameras where there are some (summary.json: camera_rot_err_deg, camera_trans_err)."""
    import numpy as np

    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import iter_tar_samples
    from train_svr.camera import camera_errors
    from train_svr.data import input_image

    preds, errs = {}, []
    for path, keys in sel.items.items():
        want = set(keys)
        for raw in iter_tar_samples(path):
            if raw["__key__"] in want:
                s = decode_sample(raw, ["image.png", "rgba.png", "camera.json"])
                preds[raw["__key__"]] = estimator.predict_camera(input_image(s))
                if "camera.json" in s:
                    errs.append(camera_errors(preds[raw["__key__"]], s["camera.json"]))
    if not errs:
        return preds, {}
    rot = np.array([e["rot_err_deg"] for e in errs])
    return preds, {"camera_rot_err_deg": float(rot.mean()), "camera_rot_err_deg_median": float(np.median(rot)),
                   "camera_trans_err": float(np.mean([e["trans_err"] for e in errs]))}

#!/usr/bin/env bash
# Real photographs end to end on the test fixtures (README "Real photographs"): a Pix3D copy
# in Pix3D's layout and a photo folder, both drawn from procedural shapes (tests/pix3d_fixture.py),
# a tiny SVR model and camera estimator trained on procedural renders, eval + report.
# usage: scripts/real_photos_demo.sh OUT   (about 10 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:?usage: $0 OUT}
PY=${PYTHON:-python}
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "tests")
from pix3d_fixture import make_pix3d
out = Path(sys.argv[1])
if not (out / "Pix3D" / "pix3d.json").exists():
    root, _ = make_pix3d(out / "Pix3D")
    photos = out / "photos"
    photos.mkdir(exist_ok=True)
    for img in sorted((root / "img").rglob("*.png")):
        name = f"{img.parent.name}_{img.name}"
        shutil.copy(img, photos / name)
        shutil.copy(root / "mask" / img.parent.name / img.name, photos / name.replace(".png", "_mask.png"))
PYEOF
cdc-aug render --source procedural --categories chair,sofa --max-shapes 8 --views 24 --size 64 --out "$OUT/renders"
cdc-aug train --config configs/train/tiny.yaml --data.shards "$OUT/renders" --runs_dir "$OUT/runs" --name svr-clean \
  --trainer.enable_progress_bar false
cdc-aug train-camera --config configs/train/camera_tiny.yaml --data.shards "$OUT/renders" --runs_dir "$OUT/runs" \
  --name camera --trainer.enable_progress_bar false
CKPT=$OUT/runs/svr-clean/checkpoints/last.ckpt
CAM=$OUT/runs/camera/checkpoints/last.ckpt
cdc-aug eval --ckpt "$CKPT" --data "pix3d:$OUT/Pix3D" "images:$OUT/photos" --crop-size 64 --resolution 48 \
  --camera-ckpt "$CAM" --no-progress --out "$OUT/eval/svr-clean__pix3d" "$OUT/eval/svr-clean__photos"
cdc-aug eval --ckpt "$CKPT" --data "pix3d:$OUT/Pix3D" --crop-size 64 --resolution 48 --camera predicted \
  --camera-ckpt "$CAM" --no-progress --out "$OUT/eval/svr-clean__pix3d-predicted"
cdc-aug report "$OUT"/eval/* --out "$OUT/report"

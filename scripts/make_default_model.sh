#!/usr/bin/env bash
# Reproduce the bundled default diffusion model (cdc_aug/default_model) from licensed
# photographs: Debian's mate-backgrounds nature photos (GPL-2+) and four scikit-image
# sample photos (see cdc_aug/default_model/MODEL_CARD.md). Two photos are held out for
# bench/default_model_quality.py.
#   bash scripts/make_default_model.sh [extra cdc-aug pretrain flags]
# The shipped run stopped on a 72-minute clock on a shared 2-core machine; MAX_STEPS
# (default: the step it reached, see the model card) makes a rerun stop at the same step
# whatever the machine's speed. On GPUs add e.g. --trainer.devices 4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
PHOTOS=data/photos
HELDOUT=(Storm.jpg Garden.jpg)
mkdir -p "$PHOTOS/train" "$PHOTOS/heldout"
for f in /usr/share/backgrounds/mate/nature/*.jpg; do
    name=$(basename "$f")
    if [[ " ${HELDOUT[*]} " == *" $name "* ]]; then cp -n "$f" "$PHOTOS/heldout/"; else cp -n "$f" "$PHOTOS/train/"; fi
done
.venv/bin/python - <<'PY'
from pathlib import Path
from PIL import Image
import skimage.data as d
for name in ("coffee", "chelsea", "rocket", "astronaut"):
    p = Path("data/photos/train") / f"skimage-{name}.png"
    if not p.exists():
        Image.fromarray(getattr(d, name)()).save(p)
PY
RUN=runs/pretrain-default  # name and runs_dir in the config
OMP_NUM_THREADS=1 .venv/bin/cdc-aug pretrain --config configs/pretrain/default.yaml \
    --trainer.max_steps "${MAX_STEPS:-2030}" "$@"
rm -rf cdc_aug/default_model.new
cp -r "$RUN/model" cdc_aug/default_model.new
cp cdc_aug/default_model/MODEL_CARD.md cdc_aug/default_model.new/ 2>/dev/null || true
cp "$RUN/tensorboard/config.yaml" cdc_aug/default_model.new/training_config.yaml
rm -rf cdc_aug/default_model && mv cdc_aug/default_model.new cdc_aug/default_model
echo "default model written to cdc_aug/default_model"

#!/usr/bin/env bash
# The main job on the embedded defaults, on a fresh Debian machine: set up (idempotent),
# then render -> generate -> train -> eval -> report via the smoke experiment, and
# verify every shard set it wrote. Run again: finished stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
CONFIG="${1:-configs/experiments/smoke.yaml}"
# Two stages side by side where their inputs allow: single-threaded stages use both cores.
.venv/bin/cdc-aug experiment "$CONFIG" --jobs "${JOBS:-2}" </dev/null
name=$(.venv/bin/python -c "import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$CONFIG")
for d in data/experiments/"$name"/renders data/experiments/"$name"/aug/*/ data/experiments/"$name"/test/*/; do
    [ -d "$d" ] || continue  # a glob that matched nothing
    .venv/bin/cdc-aug verify "$d"
done
echo "report: report/$name/report.html"

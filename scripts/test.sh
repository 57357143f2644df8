#!/usr/bin/env bash
# Set up (idempotent) and run the checks CI runs: ruff, then the offline CPU test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" </dev/null
rc=$?
# pytest exits 5 when it collected no tests: that is a failure of the suite, say so.
if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
[ $rc -ne 0 ] && exit $rc
# the declared dependencies alone give a working tool (a fresh venv; a few minutes)
[ "${SKIP_INSTALL_CHECK:-0}" = 1 ] || bash scripts/check_install.sh

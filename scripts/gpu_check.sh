#!/usr/bin/env bash
# On the lent GPU machine (no network): install the carried wheels over its own Python,
# build our C kernel, then run the GPU check. Results land in $OUT (what comes back) and
# in benchmarks/results/gpu_check_<device>/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d gpu_wheels ]; then
    python3 -m pip install --quiet --no-index --find-links gpu_wheels --no-deps gpu_wheels/*.whl
fi
python3 -m pip install --quiet --no-index --no-deps --no-build-isolation -e . || true
python3 -m dataplane.native
OUT_DIR="${OUT:-/tmp/gpu_check_out}"
python3 -m benchmarks.gpu_check --out "$OUT_DIR/gpu_check" "$@"

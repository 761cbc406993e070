#!/usr/bin/env bash
# Runs on the GPU machine (torch 2.11.0+cu130 at /opt/torch/.venv, no Rust, no network), in one
# call: magsd's benchmark and the PyTorch anchor on the same GPU, then a 5-fold cross-validation
# time-to-result run. Writes everything to $OUT (or ./gpu-out). Prepare with scripts/prepare-gpu.sh.
set -u
out="${OUT:-gpu-out}"
mkdir -p "$out"
py=/opt/torch/.venv/bin/python
export LD_LIBRARY_PATH="$($py -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
b=.device/magsd
run() { echo "+ $*" >&2; "$@"; }
{
  run $py .device/bench_magsd_torch.py --device cuda --batch 32
  run $b bench --device cuda --batch 32
  run $py .device/bench_magsd_torch.py --device cuda --batch 32 --amp --channels-last
  run $b bench --device cuda --batch 32 --bf16 --channels-last
  run $b bench --device cuda --only loader --data .device/cxr
} 2>>"$out/bench.err" | tee "$out/bench.jsonl"
# Time to result: 5-fold CV, 30 epochs per fold, from image files, bf16 + channels-last.
start=$(date +%s)
run $b train --data .device/cxr --classes covid19,viral,bacterial,normal --folds 5 --epochs 30 \
  --device cuda --bf16 --channels-last --out "$out/cv" --quiet > "$out/cv.txt" 2>&1
echo "cv_wall_seconds $(( $(date +%s) - start ))" | tee -a "$out/cv.txt"

#!/usr/bin/env bash
# Runs on the GPU machine (torch at /opt/torch/.venv, no Rust, no network), in one call with
# carry [".device"] after `cp target/release/magsd .device/magsd && strip .device/magsd`:
# trains a ResNet50 MAG-SD for one epoch on 32 generated phantoms (the weights do not matter for
# speed), then load-tests `magsd serve` on loopback without (--max-batch 1) and with dynamic
# batching (--max-batch 16). Writes $OUT (or ./gpu-out)/serve.jsonl.
set -u
out="${OUT:-gpu-out}"
mkdir -p "$out"
source "$(dirname "$0")/gpu-env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
b=.device/magsd
work=$(mktemp -d)
$b data synth --out "$work/ph" --per-class 8 --size 256 > /dev/null
$b train --data "$work/ph" --folds 0 --epochs 1 --device cuda --out "$work/r50" --quiet > "$out/train.txt" 2>&1
for mb in 1 16; do
  $b serve --model "$work/r50" --device cuda --max-batch $mb --max-wait-ms 5 --queue 256 \
    --load-test --concurrency 1,4,16 --requests 400 --load-seconds 40 2>>"$out/serve.err" | tee -a "$out/serve.jsonl"
done

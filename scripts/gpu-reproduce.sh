#!/usr/bin/env bash
# Runs on the GPU machine (torch at /opt/torch/.venv, no Rust), prepared by scripts/prepare-gpu.sh:
# (1) a tiny Table 8 grid with --gpus 0 (child processes, CUDA_VISIBLE_DEVICES), (2) Table 8 on the
# shared cxr set (4 classes, 5 folds, paper preset, few epochs) for as long as LIMIT seconds allow,
# then --collect (which reports any unfinished units). Writes to $OUT (or ./gpu-out).
set -u
out="${OUT:-gpu-out}"
limit="${LIMIT:-300}"
epochs="${EPOCHS:-3}"
mkdir -p "$out"
source "$(dirname "$0")/gpu-env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
b=.device/magsd
t0=$(date +%s)
$b data synth --out /tmp/synth --per-class 8 --size 64 > /dev/null
$b reproduce --data /tmp/synth --preset tiny --set model.image_size=64 --table 8 --folds 2 --epochs 1 \
  --out "$out/tiny" --gpus 0 > "$out/tiny.txt" 2>&1
echo "tiny rc $? wall $(( $(date +%s) - t0 ))s" | tee -a "$out/tiny.txt"
cp -r "$out/tiny/logs" "$out/tiny-logs" 2>/dev/null
t0=$(date +%s)
timeout "$limit" $b reproduce --data .device/cxr --classes covid19,viral,bacterial,normal --table 8 --folds 5 \
  --epochs "$epochs" --set performance.bf16=true --set performance.channels_last=true --out "$out/cxr" --gpus 0 \
  > "$out/cxr.txt" 2>&1
echo "cxr rc $? wall $(( $(date +%s) - t0 ))s" | tee -a "$out/cxr.txt"
$b reproduce --out "$out/cxr" --collect >> "$out/cxr.txt" 2>&1
grep -h "fold.*held-out\|unit .* on" "$out"/cxr/logs/*.log > "$out/cxr-units.txt" 2>/dev/null
for f in "$out"/cxr/*/fold-*/train.jsonl; do echo "$f $(grep -c '"epoch"' "$f" 2>/dev/null) $(stat -c %Y "$f")"; done >> "$out/cxr-units.txt"
# Keep the reports and results, drop weights (too large to bring back).
find "$out" -name '*.safetensors' -delete

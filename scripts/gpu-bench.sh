#!/usr/bin/env bash
# One GPU call's worth of measurements (prepare with scripts/prepare-gpu.sh, then run with carry
# [".device"]): magsd's benchmark and the PyTorch anchor interleaved A B A on the same GPU, the
# CUDA-graph path against eager, the loader on all cores, then Table 3's ResNet50 and MAG-SD rows
# on the shared cxr set (4 classes, 5 folds), and `magsd serve` under load with and without
# dynamic batching. Results go to $OUT (or ./gpu-out); `bench-table.md`
# is the ratio table. Knobs: EPOCHS (default 3), ITERS (30), TRIALS (5), BATCH (32), SKIP_TRAIN=1,
# DEVICE, MAGSD_BENCH_EXTRA and ANCHOR_EXTRA (extra flags, e.g. a small image for a CPU dry run).
set -u
out="${OUT:-gpu-out}"
mkdir -p "$out"
source "$(dirname "$0")/gpu-env.sh"
dev="${DEVICE:-cuda}"
b=.device/magsd
iters="${ITERS:-30}"
trials="${TRIALS:-5}"
batch="${BATCH:-32}"
extra=(${MAGSD_BENCH_EXTRA:-})
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; date -u; } | tee "$out/gpu.txt"
run() { echo "+ $*" >&2; "$@"; }
anchor_extra=(${ANCHOR_EXTRA:-})
anchor() { run $py .device/bench_magsd_torch.py --device "$dev" --batch "$batch" --warmup 5 --iters "$iters" --infer-warmup 5 --infer-iters "$iters" "${anchor_extra[@]}" "$@"; }
magsd_bench() { run $b bench --device "$dev" --batch-size "$batch" --warmup 5 --iters "$iters" --trials "$trials" --infer-iters "$iters" --only train,infer,eval "${extra[@]}" "$@"; }
{
  # A B A per precision, so drift of the machine shows up as a difference between the two A's.
  anchor
  magsd_bench
  anchor
  anchor --amp --channels-last
  magsd_bench --bf16 --channels-last
  magsd_bench --bf16 --channels-last --set performance.cuda_graph=true
  anchor --amp --channels-last
  magsd_bench --set performance.cuda_graph=true
} 2>>"$out/bench.err" | tee "$out/bench.jsonl"
{
  run $b bench --device "$dev" --batch-size "$batch" --only graph-parity "${extra[@]}"
  run $b bench --device "$dev" --batch-size "$batch" --only graph-parity --bf16 --channels-last "${extra[@]}"
  run $b bench --device "$dev" --batch-size "$batch" --only loader --data .device/cxr "${extra[@]}"
} 2>>"$out/bench.err" | tee "$out/checks.jsonl"
$py scripts/bench-table.py "$out/bench.jsonl" "$out/checks.jsonl" > "$out/bench-table.md" 2>>"$out/bench.err"
cat "$out/bench-table.md"
[ "${SKIP_TRAIN:-0}" = 1 ] && exit 0

# Table 3's ResNet50 and MAG-SD rows: 4 classes, 5 folds, as many epochs as fit (EPOCHS), one
# grid (same folds for both rows), bf16 + channels-last.
start=$(date +%s)
run $b reproduce --data .device/cxr --classes covid19,viral,bacterial,normal --table 3 --rows resnet50,magsd \
  --folds 5 --epochs "${EPOCHS:-3}" --set performance.bf16=true --set performance.channels_last=true \
  --out "$out/table3" ${TRAIN_EXTRA:-} > "$out/table3.txt" 2>&1
echo "wall_seconds $(( $(date +%s) - start ))" | tee -a "$out/table3.txt"
cat "$out"/table3/table-3/report.md 2>/dev/null | head -60 | tee -a "$out/table3.txt"

# magsd serve on loopback with the MAG-SD model of fold 0, without and with dynamic batching.
model="$out/table3/magsd/fold-0/model.safetensors"
if [ -f "$model" ]; then
  for mb in 1 16; do
    run $b serve --model "$model" --device "$dev" --max-batch $mb --max-wait-ms 5 --queue 256 \
      --load-test --concurrency 1,4,16 --requests 200 --load-seconds 10 2>>"$out/bench.err" | tee -a "$out/serve.jsonl"
  done
fi
tar czf "$out/table3.tgz" --exclude='*.safetensors' -C "$out" table3 2>/dev/null && rm -rf "$out/table3"

#!/usr/bin/env bash
# CPU inference against the PyTorch anchor (issue 21 part 0), A B A B interleaved:
#   A = PyTorch eager, forward alone, batch 1 (../shared/reference/bench_magsd_torch.py --device cpu --infer-batch 1)
#   B = magsd predict's whole path from the file (decode, preprocess, forward, calibration,
#       unusual checks, boxes), exact float32 path, fast path and, on CPUs with AVX-512 BF16,
#       bfloat16 weights (`magsd bench --only predict`).
# Both sides run the paper preset's network (ResNet50 MA-Net, 1×224×224, 32 maps, scales 7+14,
# 3 classes) with fresh random weights of their own (BatchNorm at its initial statistics):
# latency does not depend on the weights' values. Builds nothing: uses target/release/magsd.
#
# Usage: scripts/bench-cpu-infer.sh [ROUNDS=3] [IMAGE]   (prints JSON lines, then a summary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
image=${2:-$(find ../shared/data/cxr/images -name '*.jp*g' 2>/dev/null | sort | sed -n 1p)}
python=${MAGSD_TORCH_PYTHON:-$HOME/.cache/magsd/torch-2.11.0/bin/python}
anchor=../shared/reference/bench_magsd_torch.py
magsd=target/release/magsd
[ -x "$magsd" ] || { echo "no $magsd: run cargo build --release first" >&2; exit 2; }
[ -f "$image" ] || { echo "no image: give one as the second argument" >&2; exit 2; }
eval "$(scripts/install-torch.sh)"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs; image $image" >&2
for r in $(seq 1 "$rounds"); do
  "$python" "$anchor" --device cpu --batch 2 --warmup 0 --iters 0 --no-selftest \
    --infer-batch 1 --infer-warmup 3 --infer-iters 10 2>/dev/null | tee -a "$out/torch.jsonl"
  "$magsd" bench --device cpu --only predict --image "$image" \
    --infer-warmup 2 --infer-iters 5 --trials 3 2>/dev/null | tee -a "$out/magsd.jsonl"
done
"$python" - "$out/torch.jsonl" "$out/magsd.jsonl" <<'PY'
import json, statistics, sys
t = [json.loads(l)["infer_ms"] for l in open(sys.argv[1]) if l.strip()]
m = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
fast = [x["fast"]["latency_ms_median"] for x in m]
exact = [x["exact"]["latency_ms_median"] for x in m]
diff = max(x["max_probability_diff_fast_vs_exact"] for x in m)
def s(v): return f"median {statistics.median(v):.1f} ms (min {min(v):.1f}, max {max(v):.1f}; {len(v)} rounds)"
print(f"PyTorch eager forward, batch 1:      {s(t)}")
print(f"magsd predict whole path, exact fp32: {s(exact)}")
print(f"magsd predict whole path, fast:       {s(fast)}")
tm = statistics.median(t)
print(f"ratio fast/PyTorch {statistics.median(fast)/tm:.3f}, exact/PyTorch {statistics.median(exact)/tm:.3f} (goal: fast <= 0.67)")
print(f"largest probability difference fast vs exact: {diff:.2e}")
b = [x["bf16_cpu"] for x in m if x.get("bf16_cpu")]
if b:
    bl = [x["latency"]["latency_ms_median"] for x in b]
    print(f"magsd predict whole path, bf16 (CPU): {s(bl)}; ratio bf16/PyTorch {statistics.median(bl)/tm:.3f}; "
          f"largest probability difference vs exact {max(x['max_probability_diff_vs_exact'] for x in b):.2e}")
PY

#!/usr/bin/env bash
# Runs on the GPU machine (prepare with scripts/prepare-gpu.sh; carry [".device"]). GPU check of `magsd train --deterministic`: two identical runs must log identical losses.
set -u
out="${OUT:-gpu-out}"; mkdir -p "$out"
source "$(dirname "$0")/gpu-env.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
b=.device/magsd
$b data synth --out /tmp/ph --per-class 16 --size 160 > /dev/null || exit 1
run() { # name, extra args
  local n=$1; shift
  /usr/bin/time -f "$n %e s" $b train --data /tmp/ph --folds 0 --device cuda --out /tmp/$n --quiet "$@" 2>&1 | grep -v "^$" | tail -5
}
for i in 1 2; do run tiny-det$i --preset tiny --epochs 3 --image-size 128 --deterministic; done
for i in 1 2; do run tiny-nd$i --preset tiny --epochs 3 --image-size 128; done
for i in 1 2; do run r50-det$i --preset paper --batch-size 16 --epochs 2 --scales 7+14 --set performance.log_every=1 --deterministic; done
for i in 1 2; do run r50-nd$i --preset paper --batch-size 16 --epochs 2 --scales 7+14 --set performance.log_every=1; done
$py - <<'PY'
import json
def losses(n):
    return [(r.get("global_step"), r.get("loss")) for r in map(json.loads, open(f"/tmp/{n}/train.jsonl")) if r.get("type") == "step"]
for a in ["tiny-det", "tiny-nd", "r50-det", "r50-nd"]:
    try:
        x, y = losses(a + "1"), losses(a + "2")
    except Exception as e:
        print(a, "missing:", e); continue
    diff = [i for i, (p, q) in enumerate(zip(x, y)) if p != q]
    print(f"{a}: {len(x)} steps, identical={x == y and len(x) > 0}, first difference at record {diff[0] if diff else None}",
          x[-1] if x else None, y[-1] if y else None)
PY

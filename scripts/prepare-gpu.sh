#!/usr/bin/env bash
# Fills the git-ignored .device/ folder with what one GPU call needs: the stripped release
# binary, the shared cxr images + manifest, and the PyTorch anchor script (../shared does not
# travel to the GPU machine). Then run, in one device call with carry [".device"]:
#   bash scripts/gpu-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/install-torch.sh)"
cargo build --release --quiet
rm -rf .device && mkdir -p .device
cp target/release/magsd .device/magsd && strip .device/magsd
cp ../shared/reference/bench_magsd_torch.py .device/
cp -r ../shared/data/cxr .device/cxr
du -sh .device

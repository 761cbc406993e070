#!/usr/bin/env bash
# Installs the pinned libtorch (PyPI torch==2.11.0) once per machine into a versioned virtual
# environment outside the checkout, and prints the environment a build needs.
#
#   scripts/install-torch.sh            # install if missing, print `export` lines
#   eval "$(scripts/install-torch.sh)"  # install and set up this shell for `cargo build`
#
# MAGSD_TORCH_HOME overrides where it goes (default ~/.cache/magsd/torch-2.11.0).
set -euo pipefail
TORCH_VERSION=2.11.0
# The CUDA runtime's compiler-internal headers (`crt/`), which torch's wheel leaves out; magsd's
# CUDA-graph shim (src/ffi/cuda_graph.cpp) includes libtorch's CUDA headers and needs them.
CRT_VERSION=13.0.88
home="${MAGSD_TORCH_HOME:-$HOME/.cache/magsd/torch-$TORCH_VERSION}"
py="$home/bin/python"
if ! "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != '$TORCH_VERSION' or m.version('nvidia-cuda-crt') != '$CRT_VERSION')" 2>/dev/null; then
  echo "magsd: installing torch==$TORCH_VERSION into $home (about 2.7 GB, once per machine)" >&2
  python3 -m venv "$home"
  "$py" -m pip install --quiet --upgrade pip >&2
  "$py" -m pip install --quiet "torch==$TORCH_VERSION" "nvidia-cuda-crt==$CRT_VERSION" >&2
fi
lib="$("$py" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "lib"))')"
echo "export PATH=\"$home/bin:\$PATH\""
echo "export LIBTORCH_USE_PYTORCH=1"
echo "export LD_LIBRARY_PATH=\"$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""

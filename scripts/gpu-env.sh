# Sourced by the scripts/gpu-*.sh scripts on the GPU machine: `py` is the torch 2.11 python
# (/opt/torch/.venv there, else $PYTHON or python3), and its torch/lib goes on LD_LIBRARY_PATH
# so that the carried magsd binary finds libtorch.
py="${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}"
export LD_LIBRARY_PATH="$($py -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

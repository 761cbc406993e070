// Reproducible CUDA training (`magsd train --deterministic`): the switches that PyTorch sets with
// `torch.backends.cudnn.deterministic = True`, `torch.backends.cudnn.benchmark = False` and
// `torch.use_deterministic_algorithms(True, warn_only=True)`, which tch does not expose.
#include <ATen/Context.h>

extern "C" {

// Makes cuDNN deterministic, turns cuDNN benchmarking off, and asks libtorch for deterministic
// algorithms (an operation that has none prints a warning instead of failing). Returns 0, or -1
// on error.
int magsd_set_deterministic() {
  try {
    at::globalContext().setDeterministicCuDNN(true);
    at::globalContext().setBenchmarkCuDNN(false);
    at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/true);
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 if all three switches are set, 0 if not, -1 on error.
int magsd_is_deterministic() {
  try {
    const auto& ctx = at::globalContext();
    return ctx.deterministicCuDNN() && !ctx.benchmarkCuDNN() && ctx.deterministicAlgorithms() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}
}

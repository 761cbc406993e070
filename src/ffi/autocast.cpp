// libtorch's autocast calls that tch does not expose: choosing bf16 as the CUDA autocast dtype
// (tch's `autocast` enables autocast with PyTorch's default, float16), and entering/leaving a
// CUDA autocast region through the device-specific API (tch's `autocast` calls the deprecated
// `at::autocast::set_enabled`, which prints two deprecation warnings per call).
#include <ATen/autocast_mode.h>

extern "C" {

// Sets the CUDA autocast dtype to bfloat16 (bf16 != 0) or float16. Returns 0, or -1 on error.
int magsd_set_cuda_autocast_bf16(int bf16) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 if the CUDA autocast dtype is bfloat16, 0 if not, -1 on error.
int magsd_cuda_autocast_is_bf16() {
  try {
    return at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16 ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Enters a CUDA autocast region (like `torch.autocast("cuda")`'s __enter__). Returns the previous
// enabled state (0 or 1) to pass to magsd_autocast_exit, or -1 on error.
int magsd_autocast_enter() {
  try {
    int prev = at::autocast::is_autocast_enabled(at::kCUDA) ? 1 : 0;
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::increment_nesting();
    return prev;
  } catch (...) {
    return -1;
  }
}

// Leaves the region: clears the cast cache when the outermost region ends and restores `prev`.
int magsd_autocast_exit(int prev) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(at::kCUDA, prev != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}
}

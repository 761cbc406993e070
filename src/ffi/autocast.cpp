// Two libtorch calls that tch does not expose: choosing bf16 as the CUDA autocast dtype
// (tch's `autocast` enables autocast with PyTorch's default, float16).
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
}

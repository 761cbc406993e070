// The SGD update as one group of libtorch multi-tensor (`_foreach_*`) kernels, as PyTorch's
// `torch.optim.SGD(foreach=True)` does: a handful of launches for all parameters instead of
// several per parameter. tch does not expose the `_foreach_*` operators. Also pinning host
// memory for the uploads of batches and random numbers.
#include <torch/torch.h>

#include <vector>

extern "C" {

// One step over n parameters. `params`, `grads` and `bufs` are arrays of n `at::Tensor*`
// (tch's tensor handles); `bufs` may be null when momentum is 0. Every buffer must already
// exist (zeros before the first step give `buf = d = grad + wd·p`, PyTorch's first-step rule,
// exactly).
//   d = g + wd·p;  buf = m·buf + d;  d = d + m·buf (Nesterov) or buf;  p -= lr·d
// Returns 0, or -1 on error (e.g. tensors on different devices).
int magsd_sgd_foreach(at::Tensor **params, at::Tensor **grads, at::Tensor **bufs, int n, double lr,
                      double momentum, double weight_decay, int nesterov) {
  try {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> p, g, b;
    p.reserve(n);
    g.reserve(n);
    for (int i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      if (momentum != 0.0) b.push_back(*bufs[i]);
    }
    std::vector<at::Tensor> d = weight_decay != 0.0 ? at::_foreach_add(g, p, weight_decay) : g;
    if (momentum != 0.0) {
      at::_foreach_mul_(b, momentum);
      at::_foreach_add_(b, d);
      if (nesterov) {
        d = at::_foreach_add(d, b, momentum);
      } else {
        d = b;
      }
    }
    at::_foreach_add_(p, d, -lr);
    return 0;
  } catch (...) {
    return -1;
  }
}
}

extern "C" {
// A page-locked copy of a host tensor (`Tensor.pin_memory()` without the deprecated device
// argument, which tch always passes and which makes libtorch warn on every call). Returns a new
// `at::Tensor*` for tch to own, or null on error (e.g. no CUDA driver to pin with).
at::Tensor *magsd_pin_memory(at::Tensor *t) {
  try {
    return new at::Tensor(t->pin_memory());
  } catch (...) {
    return nullptr;
  }
}
}

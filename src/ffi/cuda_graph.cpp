// CUDA graphs for the training step (libtorch's at::cuda::CUDAGraph), which tch does not expose.
// A step is captured once on a side stream (capture is not allowed on the default stream) and
// then replayed: one launch for the whole step instead of thousands of kernel launches.
// Built without CUDA headers (MAGSD_NO_CUDA_GRAPH), every function reports "unavailable".
#ifndef MAGSD_NO_CUDA_GRAPH
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> previous;
  bool autocast_cache = true;
  explicit Graph(c10::DeviceIndex device) : side(c10::cuda::getStreamFromPool(false, device)) {}
};
}  // namespace

extern "C" {

// A new, empty graph with its own side stream on `device`; null on error.
void *magsd_graph_new(int device) {
  try {
    return new Graph(static_cast<c10::DeviceIndex>(device));
  } catch (...) {
    return nullptr;
  }
}

void magsd_graph_free(void *g) { delete static_cast<Graph *>(g); }

// Makes the graph's side stream current, after all work queued so far has finished.
int magsd_graph_enter_side(void *g) {
  try {
    auto *graph = static_cast<Graph *>(g);
    c10::cuda::device_synchronize();
    graph->previous = c10::cuda::getCurrentCUDAStream(graph->side.device_index());
    c10::cuda::setCurrentCUDAStream(graph->side);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Back to the stream that was current before, after the side stream's work has finished.
int magsd_graph_leave_side(void *g) {
  try {
    auto *graph = static_cast<Graph *>(g);
    c10::cuda::device_synchronize();
    if (graph->previous) c10::cuda::setCurrentCUDAStream(*graph->previous);
    graph->previous.reset();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Starts recording on the side stream. Autocast's weight cache is off while recording (its
// cached casts would be freed when the autocast region ends, under the recorded graph).
int magsd_graph_capture_begin(void *g) {
  try {
    auto *graph = static_cast<Graph *>(g);
    if (magsd_graph_enter_side(g) != 0) return -1;
    graph->autocast_cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    graph->graph.capture_begin();
    return 0;
  } catch (...) {
    return -1;
  }
}

int magsd_graph_capture_end(void *g) {
  int rc = 0;
  auto *graph = static_cast<Graph *>(g);
  try {
    graph->graph.capture_end();
  } catch (...) {
    rc = -1;
  }
  try {
    at::autocast::set_autocast_cache_enabled(graph->autocast_cache);
  } catch (...) {
  }
  if (magsd_graph_leave_side(g) != 0) rc = -1;
  return rc;
}

// Launches the recorded work on the current stream.
int magsd_graph_replay(void *g) {
  try {
    static_cast<Graph *>(g)->graph.replay();
    return 0;
  } catch (...) {
    return -1;
  }
}
}
#else
extern "C" {
void *magsd_graph_new(int) { return nullptr; }
void magsd_graph_free(void *) {}
int magsd_graph_enter_side(void *) { return -1; }
int magsd_graph_leave_side(void *) { return -1; }
int magsd_graph_capture_begin(void *) { return -1; }
int magsd_graph_capture_end(void *) { return -1; }
int magsd_graph_replay(void *) { return -1; }
}
#endif

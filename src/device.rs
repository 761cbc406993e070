//! Where tensors live and in what precision: `--device auto|cpu|cuda`, bf16 autocast and
//! channels-last memory layout (both CUDA-only options).
use serde::{Deserialize, Serialize};
use tch::{Cuda, Device, Tensor};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when a GPU is visible, otherwise CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda if Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(Error::Config(
                "--device cuda, but libtorch sees no CUDA device (is the GPU driver visible, and \
                 libtorch_cuda on LD_LIBRARY_PATH?)"
                    .into(),
            )),
        }
    }
}

impl DeviceChoice {
    /// The choice that names `device` itself (what a run folder records, never `auto`).
    pub fn used(device: Device) -> Self {
        if device.is_cuda() { DeviceChoice::Cuda } else { DeviceChoice::Cpu }
    }
}

unsafe extern "C" {
    fn magsd_set_deterministic() -> i32;
}

/// `performance.deterministic`: deterministic cuDNN and libtorch algorithms, cuDNN benchmarking
/// off (see `src/ffi/determinism.cpp`). cuBLAS needs its workspace fixed too
/// (`CUBLAS_WORKSPACE_CONFIG`, as PyTorch documents), which only works before CUDA starts.
pub fn set_deterministic() -> Result<()> {
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // SAFETY: called before any other thread of ours starts (the loader and the Ctrl-C handler come later).
        unsafe { std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8") };
    }
    // SAFETY: a plain C function without arguments that owns nothing.
    if unsafe { magsd_set_deterministic() } != 0 {
        return Err(Error::Config("libtorch refused to switch to deterministic algorithms".into()));
    }
    Ok(())
}

/// The one device set-up of every command that trains or infers: determinism first (it must
/// precede CUDA's start), then the device. Call it before any data is read or network built.
pub fn set_up(choice: DeviceChoice, deterministic: bool) -> Result<Device> {
    if deterministic {
        set_deterministic()?;
    }
    choice.resolve()
}

/// A note for the user when CUDA-only options were asked for on another device.
pub fn cuda_only_note(bf16: bool, channels_last: bool, device: Device) -> Option<String> {
    ((bf16 || channels_last) && !device.is_cuda())
        .then(|| "note: --bf16 and --channels-last apply on CUDA only; this run is fp32 in the default layout".to_string())
}

/// Human-readable name of a device (GPU model where known).
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i} ({} visible)", Cuda::device_count()),
        other => format!("{other:?}"),
    }
}

unsafe extern "C" {
    fn magsd_set_cuda_autocast_bf16(bf16: i32) -> i32;
    fn magsd_cuda_autocast_is_bf16() -> i32;
    fn magsd_autocast_enter() -> i32;
    fn magsd_autocast_exit(prev: i32) -> i32;
    fn magsd_pin_memory(t: *mut std::ffi::c_void) -> *mut std::ffi::c_void;
}

/// Runs `f` under CUDA autocast with bfloat16 when `enabled` and `device` is CUDA; otherwise
/// runs it as is (fp32). Mirrors `torch.autocast("cuda", dtype=torch.bfloat16)`.
pub fn autocast_bf16<T>(enabled: bool, device: Device, f: impl FnOnce() -> T) -> T {
    if !enabled || !device.is_cuda() {
        return f();
    }
    set_autocast_bf16();
    let _guard = AutocastGuard::enter();
    f()
}

/// Inside CUDA autocast while it lives: leaving happens in `drop`, so a panic inside the
/// closure (caught by the serve batcher, say) does not leave this thread in autocast.
struct AutocastGuard {
    prev: i32,
}

impl AutocastGuard {
    fn enter() -> Self {
        // The same steps as tch's `autocast`, through libtorch's per-device API (tch's calls
        // the deprecated `set_enabled`, which warns on every call).
        // SAFETY: plain C functions on libtorch's thread-local autocast state.
        let prev = unsafe { magsd_autocast_enter() };
        assert!(prev >= 0, "libtorch refused to enter autocast");
        AutocastGuard { prev }
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: as above; `prev` came from the matching enter on this thread.
        let rc = unsafe { magsd_autocast_exit(self.prev) };
        // No panic while unwinding: that would abort the process.
        if rc != 0 && !std::thread::panicking() {
            panic!("libtorch refused to leave autocast");
        }
    }
}

/// Selects bfloat16 as the CUDA autocast dtype (float16 is libtorch's default).
pub fn set_autocast_bf16() {
    // SAFETY: plain C functions without arguments that own nothing.
    let rc = unsafe { magsd_set_cuda_autocast_bf16(1) };
    assert_eq!(rc, 0, "libtorch refused to set the autocast dtype");
}

/// True when the CUDA autocast dtype is bfloat16.
pub fn autocast_is_bf16() -> bool {
    // SAFETY: as above.
    unsafe { magsd_cuda_autocast_is_bf16() == 1 }
}

/// A host tensor's copy on `device`. On CUDA it goes through page-locked (pinned) memory with a
/// non-blocking copy, so the host does not wait for it: the copy is queued on the stream behind
/// the work already there (libtorch's pinned allocator keeps the host buffer until the copy has
/// run). On the CPU, or when memory cannot be pinned, it is a plain copy.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if device.is_cuda()
        && let Some(pinned) = pin_memory(t)
        && let Ok(on_device) = pinned.f_to_device_(device, t.kind(), true, false)
    {
        return on_device;
    }
    t.to_device(device)
}

/// A page-locked copy of a host tensor, or None when memory cannot be pinned (no CUDA driver).
fn pin_memory(t: &Tensor) -> Option<Tensor> {
    // SAFETY: `t.as_ptr()` is a live `at::Tensor*`; the shim returns a new one that we own, or null.
    let p = unsafe { magsd_pin_memory(t.as_ptr() as *mut std::ffi::c_void) };
    // SAFETY: a non-null result is a fresh tensor handle, owned from here on.
    (!p.is_null()).then(|| unsafe { Tensor::from_ptr(p as *mut torch_sys::C_tensor) })
}

/// The same values in channels-last (NHWC) memory order, still indexed as `[N, C, H, W]`:
/// `permute → contiguous → permute back` gives the strides cuDNN's NHWC kernels want.
pub fn channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 {
        return t.shallow_clone();
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Converts every 4-D variable of the store to channels-last in place.
pub fn vars_to_channels_last(vs: &tch::nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nhwc = channels_last(&v);
                v.set_data(&nhwc);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_dtype_can_be_switched_to_bf16() {
        set_autocast_bf16();
        assert!(autocast_is_bf16());
    }

    #[test]
    fn upload_falls_back_to_a_plain_copy_off_cuda() {
        let t = Tensor::from_slice(&[1.5f64, -2.0, 3.25]);
        let u = upload(&t, Device::Cpu);
        assert_eq!(u.device(), Device::Cpu);
        assert!(u.equal(&t));
    }

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let t = Tensor::arange(2 * 3 * 4 * 5, (tch::Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
        let c = channels_last(&t);
        assert_eq!(c.size(), t.size());
        assert!(c.equal(&t));
        assert_eq!(c.stride(), vec![60, 1, 15, 3]);
    }
}

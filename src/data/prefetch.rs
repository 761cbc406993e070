//! Batches moved to the training device one step ahead: batch k + 1 is taken from the loader
//! and its upload queued before batch k is handed to the step. On CUDA the upload is a
//! non-blocking copy from pinned memory (`device::upload`), so the host never waits for a copy;
//! the copy runs on the same stream as the step's kernels, in queue order, so it does not
//! overlap their compute (that would need a second stream). On the CPU it is a plain copy.
use tch::{Device, Tensor};

use super::loader::Batch;
use crate::device::{channels_last, upload};

/// A batch whose images and labels are on the device (images in channels-last when asked).
pub struct DeviceBatch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, String)>,
    pub warnings: Vec<(usize, String)>,
}

/// Wraps an iterator of host batches; yields them on `device`, each upload queued one batch early.
pub struct DeviceBatches<I: Iterator<Item = Batch>> {
    inner: I,
    device: Device,
    channels_last: bool,
    ahead: Option<DeviceBatch>,
}

impl<I: Iterator<Item = Batch>> DeviceBatches<I> {
    pub fn new(inner: I, device: Device, channels_last: bool) -> Self {
        DeviceBatches { inner, device, channels_last, ahead: None }
    }

    fn fetch(&mut self) -> Option<DeviceBatch> {
        let b = self.inner.next()?;
        let images = upload(&b.images, self.device);
        Some(DeviceBatch {
            images: if self.channels_last { channels_last(&images) } else { images },
            labels: upload(&b.labels, self.device),
            indices: b.indices,
            failures: b.failures,
            warnings: b.warnings,
        })
    }
}

impl<I: Iterator<Item = Batch>> Iterator for DeviceBatches<I> {
    type Item = DeviceBatch;

    fn next(&mut self) -> Option<DeviceBatch> {
        let current = match self.ahead.take() {
            Some(b) => b,
            None => self.fetch()?,
        };
        self.ahead = self.fetch();
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(v: f32) -> Batch {
        Batch {
            images: Tensor::from_slice(&[v; 4]).view([1, 1, 2, 2]),
            labels: Tensor::from_slice(&[v as i64]),
            indices: vec![v as usize],
            failures: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Same batches, same order, the next one already taken from the source.
    #[test]
    fn yields_every_batch_in_order_one_ahead() {
        let taken = std::cell::Cell::new(0);
        let source = (0..3).map(|i| {
            taken.set(taken.get() + 1);
            batch(i as f32)
        });
        let mut it = DeviceBatches::new(source, Device::Cpu, false);
        let first = it.next().unwrap();
        assert_eq!(first.indices, vec![0]);
        assert_eq!(taken.get(), 2, "batch 1 is prepared while batch 0 is used");
        let rest: Vec<Vec<usize>> = it.map(|b| b.indices).collect();
        assert_eq!(rest, vec![vec![1], vec![2]]);
        assert_eq!(first.images.size(), vec![1, 1, 2, 2]);
        assert_eq!(first.labels.int64_value(&[0]), 0);
    }
}

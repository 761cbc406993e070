//! The parallel input pipeline: decode → resize → CLAHE → (augment) → z-score → `[B, 1, H, W]`.
//!
//! Each batch is built by rayon workers, one image per task; several batches are built at once
//! (`prefetch + 1` in flight, handed out in order) while the model works on the current one, so
//! a slow image (a large file to decode) does not hold the other workers at a batch boundary. The deterministic part (decode, resize,
//! CLAHE) is cached in memory by default, as 8-bit (16-bit without CLAHE) pixels: 50 KB per
//! 224×224 image. Augmentation draws from a stream keyed by (seed, epoch, image), so batches are
//! the same whatever the thread count or order. An image that fails is reported in the batch's
//! `failures` and left out; the rest of the batch goes on. No image is ever dropped silently:
//! every index asked for comes back either in `indices` or in `failures`, even if a worker
//! panics (the panic becomes a failure of that image, or of the whole chunk if building the
//! batch itself failed). Images that decoded with a warning (e.g. a truncated JPEG) are used and
//! reported in `warnings`, once per image over the loader's life (so once per file in training).
use std::collections::{HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;
use tch::Tensor;

use super::augment::AugmentPolicy;
use super::dataset::Dataset;
use super::decode::{DecodeLimits, GrayImage, Pixels, decode_file};
use super::preprocess::{Plane, PreprocessConfig, zscore};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Everything that turns a file into a model input.
#[derive(Clone, Debug, Default)]
pub struct InputPipeline {
    pub preprocess: PreprocessConfig,
    pub augment: AugmentPolicy,
    pub limits: DecodeLimits,
}

impl InputPipeline {
    /// The model input for an already decoded image, without augmentation.
    pub fn eval_plane(&self, img: &GrayImage) -> Plane {
        let mut p = self.preprocess.to_plane(&self.preprocess.prepare(img));
        zscore(&mut p, self.preprocess.zscore);
        p
    }

    /// Decodes a file and returns its model input `[1, 1, S, S]` and the decoded image.
    pub fn eval_tensor(&self, path: &Path) -> Result<(Tensor, GrayImage)> {
        let img = decode_file(path, &self.limits)?;
        let p = self.eval_plane(&img);
        let s = self.preprocess.size as i64;
        Ok((Tensor::from_slice(&p.data).view([1, 1, s, s]), img))
    }
}

/// One batch: images `[B, 1, S, S]` (float32, CPU), labels `[B]` (int64), the dataset indices
/// they came from, the images that could not be read, and warnings about images that were used
/// (each image's warnings appear in one batch only).
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
    pub failures: Vec<(usize, String)>,
    pub warnings: Vec<(usize, String)>,
}

/// Prepared pixels and the decoder's warnings about them.
type Prepared = (Arc<Pixels>, Arc<Vec<String>>);
/// A model input and the decoder's warnings about its image.
type PlaneWarned = (Plane, Arc<Vec<String>>);
type CacheSlot = OnceLock<std::result::Result<Prepared, String>>;

/// Time spent in each stage of the pipeline, summed over all workers (nanoseconds), and the
/// images that went through it: what `magsd bench --only loader` reports per image.
#[derive(Debug, Default)]
pub struct StageTimes {
    pub decode: AtomicU64,
    /// Resize and CLAHE.
    pub prepare: AtomicU64,
    pub augment: AtomicU64,
    /// Conversion to float and z-score.
    pub zscore: AtomicU64,
    /// Copying a batch's images into one tensor.
    pub collate: AtomicU64,
    pub images: AtomicU64,
}

impl StageTimes {
    fn add(counter: &AtomicU64, since: Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Milliseconds per image of each stage: (name, ms).
    pub fn per_image_ms(&self) -> Vec<(&'static str, f64)> {
        let n = self.images.load(Ordering::Relaxed).max(1) as f64;
        let ms = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e6 / n;
        vec![
            ("decode", ms(&self.decode)),
            ("resize_clahe", ms(&self.prepare)),
            ("augment", ms(&self.augment)),
            ("zscore", ms(&self.zscore)),
            ("collate", ms(&self.collate)),
        ]
    }
}

#[derive(Clone)]
pub struct Loader {
    ds: Arc<Dataset>,
    pipeline: Arc<InputPipeline>,
    cache: Option<Arc<Vec<CacheSlot>>>,
    seed: u64,
    /// Images whose warnings were already reported.
    warned: Arc<Mutex<HashSet<usize>>>,
    /// Worker threads: rayon's global pool unless [`Loader::with_pool`] set one.
    pool: Option<Arc<rayon::ThreadPool>>,
    times: Arc<StageTimes>,
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown cause".into())
}

impl Loader {
    /// `cache`: keep prepared pixels in memory after the first read (worth it for training).
    pub fn new(ds: Arc<Dataset>, pipeline: InputPipeline, seed: u64, cache: bool) -> Self {
        let cache = cache.then(|| Arc::new((0..ds.samples.len()).map(|_| OnceLock::new()).collect()));
        Loader { ds, pipeline: Arc::new(pipeline), cache, seed, warned: Arc::default(), pool: None, times: Arc::default() }
    }

    /// Runs the workers in `pool` instead of rayon's global pool (e.g. one thread, to measure
    /// how the pipeline scales).
    pub fn with_pool(mut self, pool: Arc<rayon::ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// The stage times accumulated so far by this loader and its clones.
    pub fn stage_times(&self) -> &StageTimes {
        &self.times
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.ds
    }

    pub fn pipeline(&self) -> &InputPipeline {
        &self.pipeline
    }

    fn prepare_uncached(&self, idx: usize) -> Result<Prepared> {
        let path = &self.ds.samples[idx].path;
        let t = Instant::now();
        let img = decode_file(path, &self.pipeline.limits)?;
        StageTimes::add(&self.times.decode, t);
        let warnings = img.source.warnings.iter().map(|w| format!("{}: {w}", path.display())).collect();
        let t = Instant::now();
        let prepared = self.pipeline.preprocess.prepare(&img);
        StageTimes::add(&self.times.prepare, t);
        Ok((Arc::new(prepared), Arc::new(warnings)))
    }

    /// Resized (and CLAHE'd) pixels of sample `idx`.
    pub fn prepared(&self, idx: usize) -> Result<Arc<Pixels>> {
        Ok(self.prepared_with_warnings(idx)?.0)
    }

    fn prepared_with_warnings(&self, idx: usize) -> Result<Prepared> {
        match &self.cache {
            None => self.prepare_uncached(idx),
            Some(c) => c[idx]
                .get_or_init(|| self.prepare_uncached(idx).map_err(|e| e.to_string()))
                .clone()
                .map_err(Error::Data),
        }
    }

    /// The model input of sample `idx`; augmented with the epoch's stream when `epoch` is set.
    pub fn plane(&self, idx: usize, epoch: Option<u64>) -> Result<Plane> {
        Ok(self.plane_with_warnings(idx, epoch)?.0)
    }

    /// [`Loader::plane`] and the decoder's warnings about the image; a panic anywhere in
    /// preparing it is caught and returned as an error naming the file.
    fn plane_with_warnings(&self, idx: usize, epoch: Option<u64>) -> Result<PlaneWarned> {
        catch_unwind(AssertUnwindSafe(|| self.plane_unguarded(idx, epoch))).unwrap_or_else(|p| {
            Err(Error::bad_file(&self.ds.samples[idx].path, format!("preparing this image crashed ({})", panic_message(&*p))))
        })
    }

    fn plane_unguarded(&self, idx: usize, epoch: Option<u64>) -> Result<PlaneWarned> {
        let prep = &self.pipeline.preprocess;
        let (pixels, warnings) = self.prepared_with_warnings(idx)?;
        let t = Instant::now();
        let mut p = prep.to_plane(&pixels);
        if let Some(epoch) = epoch {
            let mut rng = Rng::derive(self.seed, &[epoch, idx as u64]);
            let draw = self.pipeline.augment.draw(&mut rng, p.width, p.height);
            if !draw.is_identity() {
                p = draw.apply(&p);
            }
            StageTimes::add(&self.times.augment, t);
        }
        let t = Instant::now();
        zscore(&mut p, prep.zscore);
        StageTimes::add(&self.times.zscore, t);
        self.times.images.fetch_add(1, Ordering::Relaxed);
        Ok((p, warnings))
    }

    /// Builds one batch in parallel. `epoch: Some(e)` augments (training), `None` does not.
    pub fn batch(&self, indices: &[usize], epoch: Option<u64>) -> Batch {
        let work = || indices.par_iter().map(|&i| (i, self.plane_with_warnings(i, epoch))).collect();
        let results: Vec<(usize, Result<PlaneWarned>)> = match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        };
        let t = Instant::now();
        let s = self.pipeline.preprocess.size;
        let mut data = Vec::with_capacity(indices.len() * s * s);
        let mut labels = Vec::new();
        let mut ok = Vec::new();
        let mut failures = Vec::new();
        let mut warnings = Vec::new();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        for (i, r) in results {
            match r {
                Ok((p, w)) => {
                    data.extend_from_slice(&p.data);
                    labels.push(self.ds.samples[i].label as i64);
                    ok.push(i);
                    if !w.is_empty() && warned.insert(i) {
                        warnings.extend(w.iter().map(|m| (i, m.clone())));
                    }
                }
                Err(e) => failures.push((i, e.to_string())),
            }
        }
        let b = ok.len() as i64;
        let batch = Batch {
            images: Tensor::from_slice(&data).view([b, 1, s as i64, s as i64]),
            labels: Tensor::from_slice(&labels),
            indices: ok,
            failures,
            warnings,
        };
        StageTimes::add(&self.times.collate, t);
        batch
    }

    /// [`Loader::batch`], or, if building it panicked, a batch that lists every image of the
    /// chunk as a failure, so that no image goes missing without a trace.
    fn batch_or_failures(&self, indices: &[usize], epoch: Option<u64>) -> Batch {
        catch_unwind(AssertUnwindSafe(|| self.batch(indices, epoch))).unwrap_or_else(|p| {
            let why = panic_message(&*p);
            let s = self.pipeline.preprocess.size as i64;
            Batch {
                images: Tensor::zeros([0, 1, s, s], (tch::Kind::Float, tch::Device::Cpu)),
                labels: Tensor::zeros([0], (tch::Kind::Int64, tch::Device::Cpu)),
                indices: Vec::new(),
                failures: indices
                    .iter()
                    .map(|&i| (i, format!("{}: building its batch crashed ({why})", self.ds.samples[i].path.display())))
                    .collect(),
                warnings: Vec::new(),
            }
        })
    }

    /// Batches of `order`, in order, built ahead: `prefetch + 1` batches are in the workers at
    /// once (each a task of the pool, its images in parallel inside it), and up to `prefetch`
    /// finished ones wait for the consumer.
    pub fn batches(&self, order: Vec<usize>, batch_size: usize, epoch: Option<u64>, prefetch: usize) -> Batches {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let me = self.clone();
        let in_flight = prefetch.max(1) + 1;
        let handle = std::thread::spawn(move || {
            let mut pending: VecDeque<Receiver<Batch>> = VecDeque::new();
            let chunks: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
            for chunk in chunks {
                if pending.len() == in_flight && !forward(&mut pending, &tx) {
                    return; // the consumer stopped early
                }
                let (done_tx, done_rx) = sync_channel(1);
                let worker = me.clone();
                // `batch_or_failures` never panics (rayon aborts on a panicking spawned task).
                let job = move || {
                    let _ = done_tx.send(worker.batch_or_failures(&chunk, epoch));
                };
                match &me.pool {
                    Some(pool) => pool.spawn(job),
                    None => rayon::spawn(job),
                }
                pending.push_back(done_rx);
            }
            while !pending.is_empty() && forward(&mut pending, &tx) {}
        });
        Batches { rx, _handle: handle }
    }
}

/// Waits for the oldest batch in flight and hands it on; false when the consumer has gone.
fn forward(pending: &mut VecDeque<Receiver<Batch>>, tx: &std::sync::mpsc::SyncSender<Batch>) -> bool {
    match pending.pop_front().map(|rx| rx.recv()) {
        Some(Ok(batch)) => tx.send(batch).is_ok(),
        // Every task sends its batch, so a closed channel means the process is going down.
        _ => false,
    }
}

/// Iterator over prefetched batches.
pub struct Batches {
    rx: Receiver<Batch>,
    _handle: std::thread::JoinHandle<()>,
}

impl Iterator for Batches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::{DatasetOptions, Dataset};

    fn folder_with_images(dir: &Path) {
        for (class, shade) in [("a", 40u8), ("b", 200u8)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for i in 0..3u8 {
                let img = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([shade.wrapping_add((x + y) as u8 + i)]));
                img.save(dir.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        std::fs::write(dir.join("a/broken.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    }

    #[test]
    fn batches_have_the_right_shape_labels_and_report_bad_files() {
        let d = tempfile::tempdir().unwrap();
        folder_with_images(d.path());
        let ds = Arc::new(Dataset::open(d.path(), &DatasetOptions::default()).unwrap());
        let pipeline = InputPipeline {
            preprocess: PreprocessConfig { size: 32, ..Default::default() },
            ..Default::default()
        };
        let loader = Loader::new(ds.clone(), pipeline, 0, true);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let batches: Vec<Batch> = loader.batches(all.clone(), 4, None, 2).collect();
        assert_eq!(batches.len(), 2);
        let total: usize = batches.iter().map(|b| b.indices.len()).sum();
        assert_eq!(total, 6);
        let failures: Vec<_> = batches.iter().flat_map(|b| b.failures.clone()).collect();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].1.contains("broken.png"), "{}", failures[0].1);
        let b = &batches[0];
        assert_eq!(b.images.size(), vec![b.indices.len() as i64, 1, 32, 32]);
        // Per-image z-score: each image has mean 0.
        let means = b.images.mean_dim(&[1i64, 2, 3][..], false, tch::Kind::Float);
        assert!(means.abs().max().double_value(&[]) < 1e-4);
        let labels: Vec<i64> = Vec::try_from(&b.labels).unwrap();
        for (l, &i) in labels.iter().zip(&b.indices) {
            assert_eq!(*l as usize, ds.samples[i].label);
        }
    }

    /// Many batches in flight come out in order, identical on one thread, on the global pool and
    /// built one at a time without prefetching, and every image is counted by the stage clock.
    #[test]
    fn batches_in_flight_keep_their_order_and_content() {
        let d = tempfile::tempdir().unwrap();
        folder_with_images(d.path());
        let ds = Arc::new(Dataset::open(d.path(), &DatasetOptions::default()).unwrap());
        let pipeline = InputPipeline {
            preprocess: PreprocessConfig { size: 16, ..Default::default() },
            augment: AugmentPolicy::AuthorsCode,
            ..Default::default()
        };
        let order: Vec<usize> = (0..40).map(|i| (i * 5) % ds.samples.len()).collect();
        let one = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap());
        let serial = Loader::new(ds.clone(), pipeline.clone(), 1, false).with_pool(one);
        let parallel = Loader::new(ds.clone(), pipeline, 1, false);
        let a: Vec<Batch> = serial.batches(order.clone(), 3, Some(2), 3).collect();
        let b: Vec<Batch> = parallel.batches(order.clone(), 3, Some(2), 3).collect();
        assert_eq!(a.len(), 14);
        let seen: Vec<usize> = a.iter().flat_map(|x| x.indices.iter().chain(x.failures.iter().map(|f| &f.0)).copied()).collect();
        let mut want = order.clone();
        let mut got = seen.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "every image is used or reported");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert!(x.images.equal(&y.images));
        }
        let plain: Vec<Batch> = order.chunks(3).map(|c| serial.batch(c, Some(2))).collect();
        assert_eq!(plain.len(), a.len());
        for (x, y) in a.iter().zip(&plain) {
            assert_eq!(x.indices, y.indices, "the prefetched batches come in the plain order");
            assert!(x.images.equal(&y.images));
            assert!(x.labels.equal(&y.labels));
        }
        let ok: usize = a.iter().map(|x| x.indices.len()).sum();
        assert_eq!(serial.stage_times().images.load(Ordering::Relaxed) as usize, 2 * ok);
    }

    /// Each stage's clock counts its own work: decoding once per image with the cache, the
    /// augmentation only for training batches.
    #[test]
    fn stage_times_go_to_the_stage_that_spent_them() {
        let d = tempfile::tempdir().unwrap();
        folder_with_images(d.path());
        let ds = Arc::new(Dataset::open(d.path(), &DatasetOptions::default()).unwrap());
        let pipeline = InputPipeline {
            preprocess: PreprocessConfig { size: 16, ..Default::default() },
            augment: AugmentPolicy::AuthorsCode,
            ..Default::default()
        };
        let loader = Loader::new(ds.clone(), pipeline, 1, true);
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let t = loader.stage_times();
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = loader.batch(&all, None);
        let decode = read(&t.decode);
        assert!(decode > 0 && read(&t.prepare) > 0 && read(&t.zscore) > 0);
        assert_eq!(read(&t.augment), 0, "evaluation batches are not augmented");
        assert_eq!(read(&t.images), 6, "six readable images, the broken one not counted");
        let _ = loader.batch(&all, Some(0));
        assert_eq!(read(&t.decode), decode, "cached images are not decoded again");
        assert!(read(&t.augment) > 0, "training batches are augmented");
        assert_eq!(read(&t.images), 12);
    }

    #[test]
    fn augmentation_is_seeded_per_epoch_and_image_and_eval_is_not_augmented() {
        let d = tempfile::tempdir().unwrap();
        folder_with_images(d.path());
        let ds = Arc::new(Dataset::open(d.path(), &DatasetOptions::default()).unwrap());
        let pipeline = InputPipeline {
            preprocess: PreprocessConfig { size: 32, ..Default::default() },
            augment: AugmentPolicy::AuthorsCode,
            ..Default::default()
        };
        let a = Loader::new(ds.clone(), pipeline.clone(), 5, false);
        let b = Loader::new(ds.clone(), pipeline, 5, true);
        let idx = 1;
        assert_eq!(a.plane(idx, Some(3)).unwrap(), b.plane(idx, Some(3)).unwrap());
        assert_eq!(a.plane(idx, None).unwrap(), a.plane(idx, None).unwrap());
        // Over many epochs some draws augment (p = 0.5) and differ from the plain input.
        let plain = a.plane(idx, None).unwrap();
        let changed = (0..20).filter(|&e| a.plane(idx, Some(e)).unwrap() != plain).count();
        assert!((3..=17).contains(&changed), "{changed}");
    }

    #[test]
    fn a_truncated_jpeg_is_used_and_warned_about_once_and_no_image_goes_missing() {
        let d = tempfile::tempdir().unwrap();
        folder_with_images(d.path());
        let mut jpg = std::io::Cursor::new(Vec::new());
        image::GrayImage::from_fn(256, 256, |x, y| image::Luma([((x * 7) ^ (y * 3)) as u8]))
            .write_to(&mut jpg, image::ImageFormat::Jpeg)
            .unwrap();
        let jpg = jpg.into_inner();
        std::fs::write(d.path().join("b/cut.jpg"), &jpg[..jpg.len() / 2]).unwrap();
        let ds = Arc::new(Dataset::open(d.path(), &DatasetOptions::default()).unwrap());
        let pipeline = InputPipeline { preprocess: PreprocessConfig { size: 32, ..Default::default() }, ..Default::default() };
        for cache in [false, true] {
            let loader = Loader::new(ds.clone(), pipeline.clone(), 0, cache);
            let all: Vec<usize> = (0..ds.samples.len()).collect();
            let mut warnings = Vec::new();
            for epoch in 0..3 {
                let batches: Vec<Batch> = loader.batches(all.clone(), 3, Some(epoch), 2).collect();
                let seen: usize = batches.iter().map(|b| b.indices.len() + b.failures.len()).sum();
                assert_eq!(seen, ds.samples.len(), "every image comes back, used or failed");
                warnings.extend(batches.into_iter().flat_map(|b| b.warnings));
            }
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].1.contains("cut.jpg") && warnings[0].1.contains("truncated JPEG"), "{warnings:?}");
        }
    }
}

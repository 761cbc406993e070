//! Dynamic batching, as TorchServe and Triton do it: each image's model input waits in a bounded
//! queue; one thread owns the model (tch tensors are not `Sync`) and takes up to `max_batch`
//! inputs, or whatever arrived within `max_wait` of the first, runs them as one batch and
//! answers each caller. A full queue refuses at once (the handler answers 503 with
//! Retry-After); nobody is ever blocked waiting for room.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::{BatchTimes, ServeCounters};
use crate::data::input_stats::ImageFeatures;
use crate::eval::predictor::{ImagePrediction, PredictTimes, Predictor};
use crate::eval::reliability::Assessment;
use crate::model::MapKind;

#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Most images per forward pass.
    pub max_batch: usize,
    /// How long the batcher waits for more images after the first one of a batch.
    pub max_wait: Duration,
    /// Images that may wait; one more is refused.
    pub queue: usize,
    /// Side of the square model input.
    pub input_size: usize,
    /// bf16 autocast (CUDA).
    pub bf16: bool,
    /// The map sent back for each image, for its predicted class (`serve --map`, as `predict --map`).
    pub map: MapKind,
}

/// What the model said about one image.
#[derive(Clone, Debug)]
pub struct Inference {
    /// Calibrated probabilities, the predicted class, the `unusual` verdict and the operating
    /// points' decisions (`Reliability::assess`).
    pub assessment: Assessment,
    /// The localisation map ([`BatchOptions::map`]), `attention_grid.side²` values, row-major.
    pub attention: Vec<f32>,
    pub attention_grid: crate::model::MapGrid,
    /// Time the image waited in the queue.
    pub queue_s: f64,
    /// Model time of the batch it ran in.
    pub inference_s: f64,
    /// Images in that batch.
    pub batch_size: usize,
}

/// The answer for one image, or why there is none (a non-finite output, a failed batch).
pub type Reply = Result<Inference, String>;

/// One image to run: its `[1, S, S]` z-scored model input (row-major) and the pixel statistics
/// of its decoded image, for the pixel screen (`None` for inputs that arrive preprocessed, as in
/// KServe).
pub type Input = (Vec<f32>, Option<ImageFeatures>);

struct Job {
    /// `[1, S, S]` z-scored input, row-major.
    input: Vec<f32>,
    image: Option<ImageFeatures>,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// Why an image was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `--queue` images already.
    QueueFull,
    /// The batcher thread has stopped.
    Stopped,
}

/// The handlers' end of the queue (cheap to clone).
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    length: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
    capacity: usize,
    input_size: usize,
}

/// The model thread's end of the queue; [`BatchWorker::spawn`] starts it.
pub struct BatchWorker {
    rx: Receiver<Job>,
    length: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
    opts: BatchOptions,
    metrics: Arc<ServeCounters>,
}

/// A queue of `opts.queue` images (at least 1) and its two ends.
pub fn queue(opts: BatchOptions, metrics: Arc<ServeCounters>) -> (Batcher, BatchWorker) {
    let opts = BatchOptions { max_batch: opts.max_batch.max(1), queue: opts.queue.max(1), ..opts };
    let (tx, rx) = sync_channel(opts.queue);
    let length = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicBool::new(false));
    let batcher = Batcher { tx, length: length.clone(), ready: ready.clone(), capacity: opts.queue, input_size: opts.input_size };
    (batcher, BatchWorker { rx, length, ready, opts, metrics })
}

impl Batcher {
    /// Queues one model input (`S × S` values); the receiver gets the answer. Never blocks.
    pub fn submit(&self, input: Input) -> Result<oneshot::Receiver<Reply>, SubmitError> {
        Ok(self.submit_all(vec![input])?.remove(0))
    }

    /// Queues a request's model inputs all together or none of them: with fewer free places than
    /// inputs the whole request is refused at once (a part-answered request helps nobody).
    pub fn submit_all(&self, inputs: Vec<Input>) -> Result<Vec<oneshot::Receiver<Reply>>, SubmitError> {
        let n = inputs.len();
        // Reserve the places first: `length` counts queued and reserved images, never fewer
        // than the channel holds, so the sends below always find room.
        self.length
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |len| (len + n <= self.capacity).then_some(len + n))
            .map_err(|_| SubmitError::QueueFull)?;
        let mut out = Vec::with_capacity(n);
        for (input, image) in inputs {
            debug_assert_eq!(input.len(), self.input_size * self.input_size);
            let (reply, rx) = oneshot::channel();
            if self.tx.try_send(Job { input, image, enqueued: Instant::now(), reply }).is_err() {
                // Only a stopped batcher refuses here; give back the places not used.
                self.length.fetch_sub(n - out.len(), Ordering::SeqCst);
                return Err(SubmitError::Stopped);
            }
            out.push(rx);
        }
        Ok(out)
    }

    /// Images waiting now.
    pub fn queue_length(&self) -> usize {
        self.length.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// True once the model thread runs.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

impl BatchWorker {
    /// Starts the model thread, which owns the predictor (the model and what its file says
    /// about trusting it). It ends when every [`Batcher`] is gone (server shut down).
    pub fn spawn(self, predictor: Predictor) -> std::io::Result<std::thread::JoinHandle<()>> {
        let ready = self.ready.clone();
        ready.store(true, Ordering::SeqCst); // the thread owns a loaded model from its first instruction
        let handle = std::thread::Builder::new().name("magsd-batcher".into()).spawn(move || self.run(&predictor));
        if handle.is_err() {
            ready.store(false, Ordering::SeqCst);
        }
        handle
    }

    fn run(self, predictor: &Predictor) {
        while let Ok(first) = self.rx.recv() {
            let mut jobs = vec![first];
            let deadline = Instant::now() + self.opts.max_wait;
            while jobs.len() < self.opts.max_batch {
                match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.length.fetch_sub(jobs.len(), Ordering::SeqCst);
            // A caller that gave up (timeout, closed connection) needs no forward pass.
            jobs.retain(|j| !j.reply.is_closed());
            if !jobs.is_empty() {
                self.run_batch(predictor, jobs);
            }
        }
        self.ready.store(false, Ordering::SeqCst);
    }

    fn run_batch(&self, predictor: &Predictor, jobs: Vec<Job>) {
        let (n, s) = (jobs.len(), self.opts.input_size);
        let taken = Instant::now();
        let mut t = BatchTimes::default();
        // libtorch reports failures (e.g. out of GPU memory) by panicking through tch: answer
        // this batch's callers with the message and keep serving.
        let out = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<Result<ImagePrediction, String>>, String> {
            let mut data = Vec::with_capacity(n * s * s);
            for j in &jobs {
                data.extend_from_slice(&j.input);
            }
            let x = tch::Tensor::from_slice(&data).view([n as i64, 1, s as i64, s as i64]); // [B, 1, S, S]
            t.input_s = taken.elapsed().as_secs_f64();
            // Calibration, the pixel screen and the detector, the operating points; a non-finite
            // output is this image's error. The web API draws its boxes at the image's size itself.
            let images: Vec<_> = jobs.iter().map(|j| j.image.as_ref()).collect();
            let mut pt = PredictTimes::default();
            let predicted = predictor.predict_batch(&x, &images, &vec![None; n], &mut pt).map_err(|e| e.to_string())?;
            (t.infer_s, t.output_s) = (pt.forward_s, pt.output_s);
            Ok(predicted.into_iter().map(|r| r.map_err(|e| e.to_string())).collect())
        }))
        .unwrap_or_else(|p| {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("model failed: {}", msg.unwrap_or_else(|| "unknown error".into())))
        });
        let inference_s = t.total();
        self.metrics.batch(n, t);
        for j in &jobs {
            self.metrics.queued(taken.duration_since(j.enqueued).as_secs_f64());
            self.metrics.answered(out.is_ok(), j.enqueued.elapsed().as_secs_f64());
        }
        match out {
            Ok(predicted) => {
                for (j, p) in jobs.into_iter().zip(predicted) {
                    let _ = j.reply.send(p.map(|p| Inference {
                        assessment: p.assessment,
                        attention: p.attention,
                        attention_grid: p.attention_grid,
                        queue_s: taken.duration_since(j.enqueued).as_secs_f64(),
                        inference_s,
                        batch_size: n,
                    }));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

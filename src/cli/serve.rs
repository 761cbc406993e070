//! `magsd serve`: the web page and HTTP API over one model; `--load-test` measures it on loopback.
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::eval::localize::Threshold;
use crate::serve::load::{LoadOptions, load_test};
use crate::serve::{AppState, Limits, ServeOptions, is_loopback, load, serve};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd serve --model runs/final                        # then open http://127.0.0.1:8080/\n  \
  magsd serve --model m.safetensors --port 9000 --max-batch 16 --max-wait-ms 10\n  \
  MAGSD_TOKEN=secret magsd serve --model m.safetensors --host 0.0.0.0\n  \
  magsd serve --model m.safetensors --load-test --concurrency 1,4,16 --requests 200\n\n\
The page, /healthz and /v2/health/* are open; with a token every other endpoint needs\n\
`Authorization: Bearer <token>`. Requests must name the server as localhost, an IP address or\n\
an --allow-host name (DNS rebinding guard). Nothing is written to disk. Ctrl-C finishes\n\
requests in flight.")]
pub struct ServeArgs {
    /// A model file (.safetensors) or a run folder holding model.safetensors.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on; anything but a loopback address is reachable from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// TCP port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <token>` on every API call (default: $MAGSD_TOKEN, if set;
    /// an empty token is refused).
    #[arg(long)]
    pub token: Option<String>,
    /// Also answer requests whose Host header is NAME (besides localhost, IP addresses and a
    /// --host name); repeatable; '*' answers any name.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_host: Vec<String>,
    /// Show the model file's and training run's paths and command on the model card without a
    /// token (with a token they are shown to authenticated callers).
    #[arg(long)]
    pub show_paths: bool,
    /// The model's name in the KServe v2 URLs (/v2/models/NAME).
    #[arg(long, default_value = "magsd")]
    pub name: String,
    /// Most images per forward pass (dynamic batching).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// How long a batch waits for more images after its first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Images that may wait for the model; one more is answered 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body, in MiB (Triton's default is 64).
    #[arg(long, default_value_t = 64)]
    pub max_body_mb: usize,
    /// Largest image, in pixels (width × height).
    #[arg(long, default_value_t = 64_000_000)]
    pub max_pixels: u64,
    /// Largest sum of pixels over one request's images (413), and the most pixels decoded at
    /// once over all requests.
    #[arg(long, default_value_t = 64_000_000)]
    pub max_request_pixels: u64,
    /// Most images in one request (multipart files, or N of a KServe tensor; 413 above it);
    /// default 32, or --queue if that is smaller.
    #[arg(long)]
    pub max_parts: Option<usize>,
    /// Per-request time limit, in seconds (408 after it); a connection must also send each
    /// request's headers within it.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// bf16 autocast (CUDA).
    #[arg(long)]
    pub bf16: bool,
    /// Attention threshold for the boxes: rel:F or abs:V (as `magsd predict`).
    #[arg(long, default_value = "rel:0.5")]
    pub threshold: String,
    /// The map behind the heatmaps and boxes (as `magsd predict --map`; default: evidence where
    /// the model has it, else mean).
    #[arg(long, value_enum)]
    pub map: Option<crate::model::MapKind>,
    /// Start the server on 127.0.0.1 and measure it instead of serving (JSON lines).
    #[arg(long)]
    pub load_test: bool,
    /// Load test: concurrent clients, one test per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Load test: requests per concurrency level.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Load test: stop each level after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub load_seconds: u64,
    /// Load test: the image to send (default: a generated 256 px phantom PNG).
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// Where `magsd demo` leaves models, newest first.
fn demo_models() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("runs")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("train").join(crate::train::trainer::MODEL_FILE))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.reverse();
    found
}

fn no_model() -> i32 {
    eprintln!(
        "magsd serve needs a model: --model FILE.safetensors or a training run folder.\n\
         To get one, run `magsd demo` (a few minutes on a CPU, no download): it trains a small model on \
         generated phantoms and writes it to runs/demo-<time>/train/model.safetensors. Or train on your \
         data with `magsd train --folds 0` (the model is RUN/model.safetensors)."
    );
    if let Some(m) = demo_models().first() {
        eprintln!("A demo model is already here: magsd serve --model {}", m.display());
    }
    2
}

/// A 256 px phantom as PNG bytes.
fn phantom_png() -> Vec<u8> {
    let p = crate::data::synth::render(0, 256, &mut crate::rng::Rng::derive(0, &[0]));
    let img = image::GrayImage::from_raw(256, 256, p.image).expect("256² samples");
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).expect("PNG encodes in memory");
    buf.into_inner()
}

/// The `--allow-host` names, and the `--host` name when it is one (a server told to listen on
/// `xray.example.org` answers to that name).
fn allowed_hosts(a: &ServeArgs) -> Vec<String> {
    let mut hosts = a.allow_host.clone();
    if a.host.parse::<std::net::IpAddr>().is_err() && !is_loopback(&a.host) {
        hosts.push(a.host.clone());
    }
    hosts
}

pub fn run(a: ServeArgs) -> Result<i32> {
    let Some(model) = a.model.clone() else {
        return Ok(no_model());
    };
    let device = a.device.set_up()?;
    let token = match (&a.token, std::env::var("MAGSD_TOKEN")) {
        (Some(t), _) => Some(t.clone()),
        (None, Ok(t)) if t.trim().is_empty() => {
            return Err(Error::Config("MAGSD_TOKEN is set but empty: unset it to serve without a token, or set a real token".into()));
        }
        (None, Ok(t)) => Some(t),
        (None, Err(_)) => None,
    };
    let opts = ServeOptions {
        model,
        name: a.name.clone(),
        device,
        token: token.clone(),
        allow_hosts: allowed_hosts(&a),
        show_paths: a.show_paths,
        max_batch: a.max_batch,
        max_wait: Duration::from_millis(a.max_wait_ms),
        queue: a.queue,
        bf16: a.bf16,
        limits: Limits {
            max_body_bytes: a.max_body_mb.saturating_mul(1 << 20),
            max_pixels: a.max_pixels,
            max_request_pixels: a.max_request_pixels,
            max_parts: a.max_parts.unwrap_or(a.queue.min(32)),
            timeout: Duration::from_secs(a.timeout_s.max(1)),
        },
        threshold: Threshold::parse(&a.threshold)?,
        map: a.map,
    };
    let state = load(&opts)?.start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("cannot start the async runtime: {e}")))?;
    if a.load_test {
        return rt.block_on(run_load_test(state, &a, token));
    }
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::Config(e.to_string()))?;
        if !is_loopback(&a.host) {
            eprintln!("warning: listening on {local}, reachable from other machines{}", if token.is_some() { "" } else { " by anyone: set --token or MAGSD_TOKEN" });
        }
        let c = &state.card;
        println!("model: {} ({} classes: {}; {}×{} input; {})", c.file, c.classes.len(), c.classes.join(", "), c.input_size, c.input_size, c.device);
        println!("serving on http://{local}/  (API: /api/v1/predict, /api/v1/model, /metrics, /v2/models/{}; Ctrl-C stops)", c.name);
        println!("{}", crate::serve::state::INTENDED_USE);
        serve(listener, state.clone(), async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping: finishing the requests in flight...");
        })
        .await
        .map_err(|e| Error::Config(format!("server failed: {e}")))?;
        Ok(0)
    })
}

async fn run_load_test(state: Arc<AppState>, a: &ServeArgs, token: Option<String>) -> Result<i32> {
    let image = match &a.image {
        Some(p) => crate::files::read_image(p)?,
        None => phantom_png(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1: {e}")))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| Error::Config(e.to_string()))?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let base = LoadOptions { url, image: Arc::new(image), concurrency: 1, requests: 3, max_time: Duration::from_secs(a.load_seconds), token };
    let warm = base.clone();
    tokio::task::spawn_blocking(move || load_test(&warm)).await.map_err(|e| Error::Data(e.to_string()))??; // warm-up, not reported
    for &c in &a.concurrency {
        let o = LoadOptions { concurrency: c, requests: a.requests, ..base.clone() };
        let (batches0, images0) = state.metrics.batches();
        let r = tokio::task::spawn_blocking(move || load_test(&o)).await.map_err(|e| Error::Data(e.to_string()))??;
        let (batches1, images1) = state.metrics.batches();
        let mut line = serde_json::to_value(&r).expect("report serialises");
        line["mean_batch"] = ((images1 - images0) as f64 / (batches1 - batches0).max(1) as f64).into();
        line["bench"] = "serve".into();
        line["model"] = state.card.backbone.clone().into();
        line["device"] = state.card.device.clone().into();
        line["max_batch"] = a.max_batch.into();
        line["max_wait_ms"] = a.max_wait_ms.into();
        println!("{line}");
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(0)
}


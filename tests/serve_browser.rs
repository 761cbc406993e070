//! The `magsd serve` page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by this test when /usr/bin/chromium is missing) opens the page
//! on 127.0.0.1, uploads a phantom X-ray, a text file and a blank image through the file input,
//! and waits for the probability bars and the heatmap of the first, the error next to the
//! second, and the "not meaningful" banner on the third (the model file carries the pixel
//! statistics of phantoms). A second server with a model whose outputs overflow shows the error
//! on the card instead of a class. The screenshots are saved as
//! target/test-artifacts/serve.png and serve-broken.png.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use magsd::eval::localize::Threshold;
use magsd::data::input_stats::{InputStats, STATS_KEY, image_features};
use magsd::model::weights::{load_tensors, save_tensors};
use magsd::serve::{Limits, ServeOptions, load, serve};
use serde_json::{Value, json};

mod common;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Installs Chromium and ChromeDriver from Debian's packages unless they are there.
fn ensure_chromium() {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        return;
    }
    for args in [vec!["update"], vec!["install", "-y", "chromium", "chromium-driver"]] {
        let status = Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("runs apt-get");
        assert!(status.success(), "apt-get {args:?} failed");
    }
}

/// Ends chromedriver (and with it the browser it started) when the test ends, pass or fail.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct WebDriver {
    agent: ureq::Agent,
    base: String,
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self.agent.post(&url).header("Content-Type", "application/json").send(b.unwrap_or(json!({})).to_string()),
        };
        let text = res.unwrap_or_else(|e| panic!("{method} {path}: {e}")).body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        assert!(v["value"].get("error").is_none(), "{method} {path}: {text}");
        v["value"].clone()
    }

    fn script(&self, session: &str, js: &str) -> Value {
        self.call("POST", &format!("/session/{session}/execute/sync"), Some(json!({ "script": js, "args": [] })))
    }
}

#[test]
fn the_page_shows_probabilities_heatmap_and_per_image_errors_in_chromium() {
    ensure_chromium();
    let dir = tempfile::tempdir().unwrap();

    // A tiny model with named classes, and the files to upload.
    let model = common::tiny_model(&dir.path().join("model.safetensors"), 64, &["covid19", "normal", "pneumonia"]);
    let cfg = magsd::model::weights::load_model(&model, tch::Device::Cpu).unwrap().model.config;
    // The pixel statistics of eight phantoms, as `magsd train` stores its training images'.
    let pipeline = magsd::data::loader::InputPipeline { preprocess: cfg.preprocess(), ..Default::default() };
    let phantoms: Vec<_> = (0..8)
        .map(|i| {
            let p = magsd::data::synth::render(i % 4, 192, &mut magsd::rng::Rng::derive(5, &[i as u64]));
            image_features(&magsd::data::decode::GrayImage::from_u8(192, 192, p.image), &pipeline)
        })
        .collect();
    let (tensors, mut meta) = load_tensors(&model).unwrap();
    meta.insert(STATS_KEY.into(), serde_json::to_string(&InputStats::from_features(&phantoms).unwrap()).unwrap());
    save_tensors(&model, &tensors, meta).unwrap();
    let p = magsd::data::synth::render(0, 192, &mut magsd::rng::Rng::derive(1, &[2]));
    let chest = dir.path().join("chest.png");
    image::GrayImage::from_raw(192, 192, p.image).unwrap().save(&chest).unwrap();
    let notes = dir.path().join("notes.png");
    std::fs::write(&notes, "not an image at all").unwrap();
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(192, 192, image::Luma([255])).save(&blank).unwrap();
    // A model whose outputs overflow (finite weights, non-finite logits).
    let broken = dir.path().join("broken.safetensors");
    let (mut tensors, meta) = load_tensors(&model).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "classifier.weight" {
            *t = t.full_like(f64::from(f32::MAX));
        }
    }
    save_tensors(&broken, &tensors, meta).unwrap();

    // The servers, on loopback, in their own runtime.
    let opts = ServeOptions {
        model,
        name: "magsd".into(),
        device: tch::Device::Cpu,
        token: None,
        allow_hosts: Vec::new(),
        show_paths: false,
        max_batch: 8,
        max_wait: Duration::from_millis(5),
        queue: 16,
        bf16: false,
        limits: Limits { max_body_bytes: 8 << 20, max_pixels: 4_000_000, max_parts: 16, ..Limits::default() },
        threshold: Threshold::default(),
        map: Some(magsd::model::MapKind::Mean),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start_server = |opts: &ServeOptions| {
        let state = load(opts).unwrap().start().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let page = format!("http://{}/", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));
        (page, stop, server)
    };
    let (page, stop, server) = start_server(&opts);
    let (broken_page, broken_stop, broken_server) = start_server(&ServeOptions { model: broken, ..opts.clone() });

    let port = free_port();
    let _driver = Driver(
        Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts chromedriver"),
    );
    let wd = WebDriver {
        agent: ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build().into(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while wd.agent.get(format!("{}/status", wd.base)).call().is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let session = wd.call(
        "POST",
        "/session",
        Some(json!({ "capabilities": { "alwaysMatch": { "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1100"]
        }}}})),
    );
    let sid = session["sessionId"].as_str().unwrap().to_string();
    wd.call("POST", &format!("/session/{sid}/url"), Some(json!({ "url": page })));
    let input = wd.call("POST", &format!("/session/{sid}/element"), Some(json!({ "using": "css selector", "value": "#files" })));
    let eid = input[ELEMENT].as_str().unwrap_or_else(|| panic!("no #files input: {input}")).to_string();
    let files = format!("{}\n{}\n{}", chest.display(), notes.display(), blank.display());
    wd.call("POST", &format!("/session/{sid}/element/{eid}/value"), Some(json!({ "text": files })));
    let states = wait_for_results(&wd, &sid, 3);
    screenshot(&wd, &sid, "serve.png");

    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(sorted, ["done", "error", "unusual"], "one image answered, one refused, one flagged");
    let banner = wd.script(
        &sid,
        "const r = document.querySelector('.result[data-state=unusual]'); const b = r.querySelector('.banner');
         return {name: r.querySelector('h3').textContent, banner: b ? b.textContent : '', visible: !!b && b.offsetHeight > 0,
                 predicted: !!r.querySelector('.predicted')};",
    );
    assert_eq!(banner["name"], json!("blank.png"));
    assert_eq!(banner["visible"], json!(true), "{banner}");
    let text = banner["banner"].as_str().unwrap();
    assert!(text.contains("this image does not look like the X-rays this model was trained on; its prediction is not meaningful"), "{banner}");
    assert!(text.contains("intensity spread"), "the reason is shown: {banner}");
    let card = wd.script(&sid, "return document.getElementById('card-body').textContent;");
    assert!(card.as_str().unwrap().contains("raw softmax"), "the card says how probabilities are made: {card}");
    let done = wd.script(
        &sid,
        "const r = document.querySelector('.result[data-state=done]');
         const c = r.querySelector('canvas');
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let coloured = 0;
         for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 30) coloured++;
         return {name: r.querySelector('h3').textContent, bars: r.querySelectorAll('.bar').length,
                 top_bar_px: r.querySelector('.bar.top .fill').offsetWidth, track_px: r.querySelector('.bar.top .track').offsetWidth,
                 predicted: r.querySelector('.predicted strong').textContent,
                 coloured: coloured / (d.length / 4), width: c.width, timing: r.querySelector('.timing').textContent};",
    );
    assert_eq!(done["name"], json!("chest.png"));
    assert_eq!(done["bars"], json!(3), "{done}");
    // The predicted class has the longest bar: at least a third of its track.
    assert!(3 * done["top_bar_px"].as_u64().unwrap() >= done["track_px"].as_u64().unwrap(), "{done}");
    assert!(["covid19", "normal", "pneumonia"].contains(&done["predicted"].as_str().unwrap()), "{done}");
    assert!(done["width"].as_u64().unwrap() >= 300, "{done}");
    assert!(done["coloured"].as_f64().unwrap() > 0.2, "the heatmap is drawn over the image: {done}");
    assert!(done["timing"].as_str().unwrap().contains(" ms"), "{done}");
    let err = wd.script(&sid, "const r = document.querySelector('.result[data-state=error]'); return r.querySelector('h3').textContent + ' | ' + r.querySelector('.message').textContent;");
    let err = err.as_str().unwrap();
    assert!(err.starts_with("notes.png | ") && err.contains("not a PNG, JPEG or DICOM"), "{err}");
    let notice = wd.script(&sid, "const n = document.getElementById('notice'); return n.offsetHeight > 0 ? n.textContent : '';");
    assert!(notice.as_str().unwrap().contains("not for diagnosis"), "{notice}");

    // The opacity slider redraws the heatmap: at 0 the image is gray again.
    let gray = wd.script(
        &sid,
        "const s = document.getElementById('opacity'); s.value = 0; s.dispatchEvent(new Event('input'));
         const c = document.querySelector('.result[data-state=done] canvas');
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
         let coloured = 0;
         for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 30) coloured++;
         return coloured / (d.length / 4);",
    );
    assert!(gray.as_f64().unwrap() < 0.05, "{gray}");

    // A model whose outputs are not finite: the card shows the error, never a class.
    wd.call("POST", &format!("/session/{sid}/url"), Some(json!({ "url": broken_page })));
    let input = wd.call("POST", &format!("/session/{sid}/element"), Some(json!({ "using": "css selector", "value": "#files" })));
    let eid = input[ELEMENT].as_str().unwrap().to_string();
    wd.call("POST", &format!("/session/{sid}/element/{eid}/value"), Some(json!({ "text": chest.display().to_string() })));
    assert_eq!(wait_for_results(&wd, &sid, 1), ["error"]);
    screenshot(&wd, &sid, "serve-broken.png");
    let err = wd.script(&sid, "const r = document.querySelector('.result'); return r.querySelector('.message').textContent + ' | ' + !!r.querySelector('.predicted');");
    let err = err.as_str().unwrap();
    assert!(err.contains("not finite") && err.ends_with("| false"), "{err}");

    wd.call("DELETE", &format!("/session/{sid}"), None);
    let _ = stop.send(());
    let _ = broken_stop.send(());
    rt.block_on(server).unwrap().unwrap();
    rt.block_on(broken_server).unwrap().unwrap();
}

/// Waits until `n` results are there, none pending, and the model card is loaded; their states.
fn wait_for_results(wd: &WebDriver, sid: &str, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let s = wd.script(
            sid,
            "return {states: [...document.querySelectorAll('.result')].map(r => r.dataset.state), card: !!document.querySelector('#card-body table')};",
        );
        let st: Vec<String> = s["states"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        if st.len() == n && st.iter().all(|x| x != "pending") && s["card"] == json!(true) {
            return st;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the page did not finish: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn screenshot(wd: &WebDriver, sid: &str, name: &str) {
    let shot = wd.call("GET", &format!("/session/{sid}/screenshot"), None);
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), &png).unwrap();
}

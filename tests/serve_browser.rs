//! The `magsd serve` page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by this test when /usr/bin/chromium is missing) opens the page
//! on 127.0.0.1, uploads a phantom X-ray and a text file through the file input, and waits for
//! the probability bars and the heatmap of the one and the error next to the other. The
//! screenshot is saved as target/test-artifacts/serve.png.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use magsd::eval::localize::Threshold;
use magsd::model::weights::save_model;
use magsd::model::{MagSd, MagSdConfig};
use magsd::serve::{Limits, ServeOptions, load, serve};
use serde_json::{Value, json};

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
    let mut cfg = MagSdConfig::tiny(3);
    cfg.image_size = 64;
    cfg.class_names = vec!["covid19".into(), "normal".into(), "pneumonia".into()];
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _m = MagSd::new(&vs.root(), cfg.clone()).unwrap();
    let model = dir.path().join("model.safetensors");
    save_model(&model, &vs, &cfg).unwrap();
    let p = magsd::data::synth::render(0, 192, &mut magsd::rng::Rng::derive(1, &[2]));
    let chest = dir.path().join("chest.png");
    image::GrayImage::from_raw(192, 192, p.image).unwrap().save(&chest).unwrap();
    let notes = dir.path().join("notes.png");
    std::fs::write(&notes, "not an image at all").unwrap();

    // The server, on loopback, in its own runtime.
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
    };
    let state = load(&opts).unwrap().start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let page = format!("http://{}/", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

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
    let files = format!("{}\n{}", chest.display(), notes.display());
    wd.call("POST", &format!("/session/{sid}/element/{eid}/value"), Some(json!({ "text": files })));

    // Wait until neither image is pending and the model card is there.
    let start = Instant::now();
    let states = loop {
        let s = wd.script(
            &sid,
            "return {states: [...document.querySelectorAll('.result')].map(r => r.dataset.state), card: !!document.querySelector('#card-body table')};",
        );
        let st: Vec<String> = s["states"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        if st.len() == 2 && st.iter().all(|x| x != "pending") && s["card"] == json!(true) {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the page did not finish: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let shot = wd.call("GET", &format!("/session/{sid}/screenshot"), None);
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("serve.png"), &png).unwrap();

    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(sorted, ["done", "error"], "one image answered, one refused");
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

    wd.call("DELETE", &format!("/session/{sid}"), None);
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

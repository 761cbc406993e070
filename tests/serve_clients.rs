//! `magsd serve` with the real clients of the Open Inference Protocol: tritonclient[http] 2.73
//! and the kserve 0.21 SDK's REST client, installed by this test into a venv of their own
//! (`~/.cache/magsd/venv-oip-clients`, once per machine), run every call of
//! `tests/clients/oip_clients.py` against a loopback server: live/ready/metadata/config/stats,
//! infer in JSON and binary, in and out, batch 1 and 4, requested outputs, version URLs, and
//! the refusals; the probabilities must equal `/api/v1/predict`'s on the same images.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use magsd::data::decode::{DecodeLimits, decode_bytes};
use magsd::data::loader::InputPipeline;
use magsd::eval::localize::Threshold;
use magsd::serve::{Limits, ServeOptions, load, serve};
use serde_json::{Value, json};

mod common;

const SIZE: usize = 64;
const CLIENTS: [&str; 2] = ["tritonclient[http]==2.73.0", "kserve==0.21.0"];

/// The clients' venv, made and filled once; a venv whose imports work is used as it is.
fn client_python() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let venv = home.join(".cache/magsd/venv-oip-clients");
    let python = venv.join("bin/python");
    let works = |p: &Path| Command::new(p).args(["-c", "import tritonclient.http, kserve, numpy"]).output().is_ok_and(|o| o.status.success());
    if works(&python) {
        return python;
    }
    std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
    let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("runs python3 -m venv");
    assert!(made.success(), "python3 -m venv {} failed", venv.display());
    let pip = Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(CLIENTS).status().expect("runs pip");
    assert!(pip.success(), "pip install {CLIENTS:?} failed");
    assert!(works(&python), "the clients do not import after installing them");
    python
}

#[test]
fn tritonclient_and_the_kserve_sdk_make_every_call_and_agree_with_the_v1_api() {
    let python = client_python();
    let dir = tempfile::tempdir().unwrap();

    let model = common::tiny_model(&dir.path().join("model.safetensors"), SIZE as i64, &["covid19", "normal", "pneumonia"]);

    let opts = ServeOptions {
        model,
        name: "magsd".into(),
        device: tch::Device::Cpu,
        token: None,
        allow_hosts: Vec::new(),
        show_paths: false,
        max_batch: 4,
        max_wait: Duration::from_millis(2),
        queue: 16,
        bf16: false,
        limits: Limits { max_parts: 8, ..Limits::default() },
        threshold: Threshold::default(),
        map: Some(magsd::model::MapKind::Mean),
    };
    let state = load(&opts).unwrap().start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));

    // Four phantoms: their model inputs as the server prepares uploads, and their /api/v1/predict
    // probabilities, one request each.
    let pipeline = InputPipeline { preprocess: state.config.preprocess(), ..Default::default() };
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let (mut planes, mut probs) = (Vec::new(), Vec::new());
    for i in 0..4u64 {
        let p = magsd::data::synth::render((i % 3) as usize, 80 + 10 * i as usize, &mut magsd::rng::Rng::derive(11, &[i]));
        let side = 80 + 10 * i as u32;
        let mut png = std::io::Cursor::new(Vec::new());
        image::GrayImage::from_raw(side, side, p.image).unwrap().write_to(&mut png, image::ImageFormat::Png).unwrap();
        let png = png.into_inner();
        planes.extend(pipeline.eval_plane(&decode_bytes(Path::new("p.png"), &png, &DecodeLimits::default()).unwrap()).data);
        let text = agent.post(&format!("http://{addr}/api/v1/predict")).send(&png[..]).unwrap().body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let r = &v["results"][0];
        probs.push(["covid19", "normal", "pneumonia"].map(|c| r["probabilities"][c].as_f64().unwrap_or_else(|| panic!("{text}"))));
    }
    std::fs::write(dir.path().join("planes.f32"), planes.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    std::fs::write(
        dir.path().join("expected.json"),
        json!({ "size": SIZE, "classes": ["covid19", "normal", "pneumonia"], "probabilities": probs }).to_string(),
    )
    .unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oip_clients.py");
    let out = Command::new(&python).arg(&script).arg(addr.to_string()).arg(dir.path()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the clients failed:\n{text}");
    assert!(text.contains("checks passed"), "{text}");
    println!("{text}");

    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

//! `magsd serve` in-process: every endpoint and every error, through the router itself
//! (`tower::ServiceExt::oneshot`) or a real loopback socket, with a tiny untrained model saved
//! by the test (64 px input, 3 named classes).
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use magsd::data::decode::{DecodeLimits, decode_bytes};
use magsd::data::loader::InputPipeline;
use magsd::eval::localize::Threshold;
use magsd::serve::{AppState, Limits, Loaded, ServeOptions, load, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const SIZE: i64 = 64;
const CLASSES: [&str; 3] = ["covid19", "normal", "pneumonia"];

mod common;

/// A tiny MAG-SD with random weights, saved as the library saves models.
fn tiny_model(dir: &Path) -> PathBuf {
    common::tiny_model(&dir.join("model.safetensors"), SIZE, &CLASSES)
}

fn options(model: &Path) -> ServeOptions {
    ServeOptions {
        model: model.to_path_buf(),
        name: "magsd".into(),
        device: tch::Device::Cpu,
        token: None,
        allow_hosts: Vec::new(),
        show_paths: false,
        max_batch: 4,
        max_wait: Duration::from_millis(2),
        queue: 16,
        bf16: false,
        limits: Limits { max_body_bytes: 2 << 20, max_pixels: 1_000_000, max_request_pixels: 4_000_000, max_parts: 16, timeout: Duration::from_secs(30) },
        threshold: Threshold::default(),
        map: Some(magsd::model::MapKind::Mean),
    }
}

struct Server {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    app: Router,
}

fn server_with(edit: impl FnOnce(&mut ServeOptions)) -> Server {
    let (dir, loaded) = loaded_with(edit);
    let state = loaded.start().unwrap();
    Server { _dir: dir, app: router(state.clone()), state }
}

fn loaded_with(edit: impl FnOnce(&mut ServeOptions)) -> (tempfile::TempDir, Loaded) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&tiny_model(dir.path()));
    edit(&mut o);
    let loaded = load(&o).unwrap();
    (dir, loaded)
}

/// A phantom chest radiograph as PNG bytes.
fn phantom_png(size: usize) -> Vec<u8> {
    let p = magsd::data::synth::render(0, size, &mut magsd::rng::Rng::derive(3, &[1]));
    encode(image::GrayImage::from_raw(size as u32, size as u32, p.image).unwrap().into(), image::ImageFormat::Png)
}

fn encode(img: image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, f).unwrap();
    buf.into_inner()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder().method("POST").uri(uri).header(header::CONTENT_TYPE, "application/octet-stream").body(body.into()).unwrap()
}

fn post_json(uri: &str, v: &Value) -> Request<Body> {
    Request::builder().method("POST").uri(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap()
}

fn multipart(files: &[(&str, &[u8])]) -> Request<Body> {
    let boundary = "magsd-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, data) in files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::builder()
        .method("POST")
        .uri("/api/v1/predict")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The `{"error": ...}` message, checking the shape.
    fn error(&self) -> String {
        let v = self.json();
        v["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.text)).to_string()
    }
}

async fn call(app: &Router, req: Request<Body>) -> Answer {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}

fn probabilities(r: &Value) -> Vec<f64> {
    CLASSES.iter().map(|c| r["probabilities"][c].as_f64().unwrap_or_else(|| panic!("no {c}: {r}"))).collect()
}

#[tokio::test]
async fn page_model_card_health_and_metrics_answer() {
    let s = server_with(|_| {});
    let page = call(&s.app, get("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("Research use only; not for diagnosis."), "{}", page.text);
    // The heatmap has a colour bar saying what its colours mean and how coarse the map is (issue 20).
    assert!(page.text.contains("id=\"colourbar\"") && page.text.contains("0: no attention") && page.text.contains("upsampled"), "{}", page.text);
    assert!(!page.text.contains("http://") && !page.text.contains("https://"), "the page must load nothing from elsewhere");
    for (asset, kind) in [("/assets/app.js", "javascript"), ("/assets/style.css", "css")] {
        let a = call(&s.app, get(asset)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.headers[header::CONTENT_TYPE].to_str().unwrap().contains(kind));
    }

    let card = call(&s.app, get("/api/v1/model")).await.json();
    assert_eq!(card["classes"], json!(CLASSES));
    assert_eq!(card["input_size"], json!(SIZE));
    assert_eq!(card["backbone"], json!("tiny"));
    assert!(card["preprocessing"]["clahe"].as_str().unwrap().contains("clip limit 4"));
    assert!(card["intended_use"].as_str().unwrap().contains("not for diagnosis"));
    assert!(card["training"].is_null(), "no run folder beside the model");

    let h = call(&s.app, get("/healthz")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["ready"], json!(true));

    // One prediction, then the metrics count it.
    let r = call(&s.app, post("/api/v1/predict", phantom_png(80))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let _ = call(&s.app, get("/nope")).await;
    let m = call(&s.app, get("/metrics")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    for line in [
        "magsd_requests_total{route=\"/api/v1/predict\",status=\"200\"} 1",
        "magsd_batch_size_count 1",
        "magsd_images_total 1",
        "magsd_queue_seconds_count 1",
        "magsd_errors_total{kind=\"not_found\"} 1",
        "magsd_request_duration_seconds_count{route=\"/api/v1/predict\"} 1",
        "magsd_queue_capacity 16",
        "magsd_ready 1",
    ] {
        assert!(m.text.contains(line), "metrics lack {line}:\n{}", m.text);
    }
}

#[tokio::test]
async fn predict_answers_like_magsd_predict_with_boxes_and_heatmap() {
    let s = server_with(|_| {});
    let png = phantom_png(120);
    let a = call(&s.app, post("/api/v1/predict?heatmap=true&filename=chest.png", png.clone())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    let r = &v["results"][0];
    assert_eq!(r["file"], json!("chest.png"));
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(120), Some(120)));
    assert_eq!(r["format"], json!("PNG"));
    let p = probabilities(r);
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    let best = CLASSES[(0..3).max_by(|&i, &j| p[i].total_cmp(&p[j])).unwrap()];
    assert_eq!(r["predicted"], json!(best));
    let boxes = r["boxes"].as_array().unwrap();
    assert!(!boxes.is_empty());
    for b in boxes {
        assert!(b["x0"].as_u64() < b["x1"].as_u64() && b["x1"].as_u64().unwrap() <= 120 && b["y1"].as_u64().unwrap() <= 120, "{b}");
    }
    for k in ["preprocess", "queue", "inference", "total"] {
        assert!(r["timings_ms"][k].as_f64().unwrap() >= 0.0);
    }
    use base64::Engine;
    for k in ["heatmap_png", "image_png"] {
        let bytes = base64::engine::general_purpose::STANDARD.decode(r[k].as_str().unwrap()).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (384, 384), "{k} at display size");
    }

    // The same steps as `magsd predict`: decode, eval_plane, the model, softmax.
    let loaded = magsd::model::weights::load_model(&s._dir.path().join("model.safetensors"), tch::Device::Cpu).unwrap();
    let pipeline = InputPipeline { preprocess: loaded.model.config.preprocess(), ..Default::default() };
    let img = decode_bytes(Path::new("chest.png"), &png, &DecodeLimits::default()).unwrap();
    let x = tch::Tensor::from_slice(&pipeline.eval_plane(&img).data).view([1, 1, SIZE, SIZE]);
    let (probs, _) = magsd::eval::evaluate::infer(&loaded.model, &x, tch::Device::Cpu, false, false);
    let direct: Vec<f64> = Vec::try_from(probs.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap();
    for (a, b) in p.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-5, "server {p:?} vs library {direct:?}");
    }

    // Without ?heatmap the PNGs are left out.
    let plain = call(&s.app, post("/api/v1/predict", png)).await.json();
    assert!(plain["results"][0].get("heatmap_png").is_none());
}

#[tokio::test]
async fn several_files_in_one_request_fail_one_by_one() {
    let s = server_with(|_| {});
    let png = phantom_png(64);
    let jpg = encode(image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(70, 50, image::Luma([90]))), image::ImageFormat::Jpeg);
    let a = call(&s.app, multipart(&[("a.png", &png), ("notes.txt", b"hello, this is text"), ("b.jpg", &jpg)])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["file"], json!("a.png"));
    assert_eq!(probabilities(&r[0]).len(), 3);
    assert_eq!(r[1]["file"], json!("notes.txt"));
    assert!(r[1]["error"].as_str().unwrap().contains("notes.txt: not a PNG, JPEG or DICOM"), "{}", r[1]);
    assert_eq!(r[2]["format"], json!("JPEG"));
    assert_eq!((r[2]["width"].as_u64(), r[2]["height"].as_u64()), (Some(70), Some(50)));
    let m = call(&s.app, get("/metrics")).await.text;
    assert!(m.contains("magsd_errors_total{kind=\"bad_image\"} 1"), "{m}");
}

#[tokio::test]
async fn bad_uploads_get_clear_json_errors() {
    let s = server_with(|o| o.limits = Limits { max_body_bytes: 300_000, max_pixels: 100 * 100, ..o.limits.clone() });
    let png = phantom_png(64);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("empty body", Vec::new(), StatusCode::BAD_REQUEST, "empty request"),
        ("truncated PNG", png[..png.len() / 2].to_vec(), StatusCode::BAD_REQUEST, "corrupt or truncated PNG"),
        ("text as image", b"patient: John Doe\n".to_vec(), StatusCode::BAD_REQUEST, "not a PNG, JPEG or DICOM"),
        ("too many pixels", phantom_png(128), StatusCode::BAD_REQUEST, "above the limit of 10000"),
        ("oversize body", vec![0u8; 400_000], StatusCode::PAYLOAD_TOO_LARGE, "larger than this server's limit of 300000 bytes"),
    ];
    for (what, body, status, says) in cases {
        let a = call(&s.app, post("/api/v1/predict?filename=x.png", body)).await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        assert!(a.error().contains(says), "{what}: {}", a.text);
    }
    let m = call(&s.app, get("/metrics")).await.text;
    assert!(m.contains("magsd_errors_total{kind=\"too_large\"} 1"), "{m}");
    assert!(m.contains("magsd_errors_total{kind=\"bad_image\"} 3"), "{m}");
}

/// A 16-bit MONOCHROME2 DICOM of a phantom, in memory.
fn phantom_dicom(size: usize) -> Vec<u8> {
    let p = magsd::data::synth::render(1, size, &mut magsd::rng::Rng::derive(5, &[2]));
    common::dicom::Dicom::gray12(size as u16, p.image.iter().map(|&v| v as u16 * 16).collect()).bytes()
}

#[tokio::test]
async fn dicom_uploads_work_and_corrupt_dicom_is_named() {
    let s = server_with(|_| {});
    let dcm = phantom_dicom(96);
    let a = call(&s.app, post("/api/v1/predict?heatmap=true&filename=chest.dcm", dcm.clone())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let r = &a.json()["results"][0];
    assert_eq!(r["format"], json!("DICOM"));
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(96), Some(96)));
    assert!(r["image_png"].is_string(), "a DICOM comes back as a PNG the page can show");
    let cut = call(&s.app, post("/api/v1/predict?filename=cut.dcm", dcm[..400].to_vec())).await;
    assert_eq!(cut.status, StatusCode::BAD_REQUEST);
    assert!(cut.error().starts_with("cut.dcm: "), "{}", cut.text);
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_the_page_or_probes() {
    let s = server_with(|o| o.token = Some("s3cret".into()));
    let with = |uri: &str, auth: Option<&str>| {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    };
    for uri in ["/api/v1/model", "/metrics", "/v2/models/magsd", "/v2/models/magsd/ready", "/v2"] {
        let missing = call(&s.app, with(uri, None)).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
        assert!(missing.error().contains("needs a token"));
        let wrong = call(&s.app, with(uri, Some("Bearer guess"))).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(wrong.error(), "wrong token");
        assert_eq!(call(&s.app, with(uri, Some("Bearer s3cret"))).await.status, StatusCode::OK, "{uri}");
        // RFC 9110: the scheme is case-insensitive.
        assert_eq!(call(&s.app, with(uri, Some("bearer s3cret"))).await.status, StatusCode::OK, "{uri}");
        assert_eq!(call(&s.app, with(uri, Some("BEARER  s3cret"))).await.status, StatusCode::OK, "{uri}");
    }
    let mut p = post("/api/v1/predict", phantom_png(64));
    assert_eq!(call(&s.app, p).await.status, StatusCode::UNAUTHORIZED);
    p = post("/api/v1/predict", phantom_png(64));
    p.headers_mut().insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    assert_eq!(call(&s.app, p).await.status, StatusCode::OK);
    for open in ["/", "/assets/app.js", "/healthz", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(call(&s.app, get(open)).await.status, StatusCode::OK, "{open} stays open");
    }
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_at_once() {
    // The batcher thread is not started yet: queued images wait, and readiness says so.
    let (_dir, loaded) = loaded_with(|o| {
        o.queue = 1;
        o.max_batch = 1;
        o.limits.max_parts = 1;
    });
    let state = loaded.state.clone();
    let app = router(state.clone());
    assert_eq!(call(&app, get("/v2/health/ready")).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(call(&app, get("/v2/models/magsd/ready")).await.json()["ready"], json!(false));
    let first = tokio::spawn({
        let app = app.clone();
        async move { call(&app, post("/api/v1/predict", phantom_png(64))).await }
    });
    while state.batcher.queue_length() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = std::time::Instant::now();
    let busy = call(&app, post("/api/v1/predict", phantom_png(64))).await;
    assert!(t.elapsed() < Duration::from_secs(5), "a full queue must answer at once");
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{}", busy.text);
    assert_eq!(busy.headers[header::RETRY_AFTER], "1");
    assert!(busy.error().contains("queue of 1 images is full"), "{}", busy.text);
    // The model thread starts: the waiting request is answered.
    loaded.start().unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(call(&app, get("/v2/health/ready")).await.status, StatusCode::OK);
    let m = call(&app, get("/metrics")).await.text;
    assert!(m.contains("magsd_errors_total{kind=\"queue_full\"} 1"), "{m}");
}

#[tokio::test]
async fn a_slow_request_times_out_with_408() {
    let (_dir, loaded) = loaded_with(|o| o.limits.timeout = Duration::from_millis(300));
    let app = router(loaded.state.clone());
    let a = call(&app, post("/api/v1/predict", phantom_png(64))).await; // no model thread: never answered
    assert_eq!(a.status, StatusCode::REQUEST_TIMEOUT, "{}", a.text);
    assert!(a.error().contains("longer than this server's limit"), "{}", a.text);
    // The caller gave up: the queued image is dropped by the batcher without a forward pass.
    let state = loaded.start().unwrap();
    for _ in 0..200 {
        if state.batcher.queue_length() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state.batcher.queue_length(), 0);
    assert!(call(&app, get("/metrics")).await.text.contains("magsd_images_total 0"));
}

/// The example request of the Open Inference Protocol's REST spec ("id": "42", one input with
/// name/shape/datatype/data, the outputs asked for by name), for this model's tensor.
fn infer_request(n: usize, data: Value) -> Value {
    json!({
        "id": "42",
        "inputs": [{ "name": "input", "shape": [n, 1, SIZE, SIZE], "datatype": "FP32", "data": data }],
        "outputs": [{ "name": "probabilities" }, { "name": "attention" }]
    })
}

#[tokio::test]
async fn kserve_v2_health_metadata_and_infer() {
    let s = server_with(|_| {});
    assert_eq!(call(&s.app, get("/v2/health/live")).await.json(), json!({ "live": true }));
    assert_eq!(call(&s.app, get("/v2/health/ready")).await.json(), json!({ "ready": true }));
    assert_eq!(call(&s.app, get("/v2/models/magsd/ready")).await.json(), json!({ "name": "magsd", "ready": true }));
    let server = call(&s.app, get("/v2")).await.json();
    assert_eq!(server["name"], json!("magsd"));
    let meta = call(&s.app, get("/v2/models/magsd")).await.json();
    assert_eq!(meta["name"], json!("magsd"));
    assert_eq!(meta["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 1, SIZE, SIZE] }]));
    assert_eq!(meta["outputs"][0], json!({ "name": "probabilities", "datatype": "FP32", "shape": [-1, 3] }));
    assert_eq!(meta["outputs"][1], json!({ "name": "attention", "datatype": "FP32", "shape": [-1, 1, 2, 2] }));
    let missing = call(&s.app, get("/v2/models/resnet")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error().contains("serves 'magsd'"));

    // Two preprocessed images, as a client would send them: the first is a phantom prepared
    // exactly as the server prepares uploads, so both routes must agree on it.
    let png = phantom_png(100);
    let pipeline = InputPipeline { preprocess: s.state.config.preprocess(), ..Default::default() };
    let plane = pipeline.eval_plane(&decode_bytes(Path::new("p.png"), &png, &DecodeLimits::default()).unwrap()).data;
    let other: Vec<f32> = (0..SIZE * SIZE).map(|i| ((i % 17) as f32 - 8.0) / 5.0).collect();
    let flat: Vec<f32> = plane.iter().chain(&other).copied().collect();
    let a = call(&s.app, post_json("/v2/models/magsd/infer", &infer_request(2, json!(flat)))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    assert_eq!(v["model_name"], json!("magsd"));
    assert_eq!(v["id"], json!("42"));
    let out = v["outputs"].as_array().unwrap();
    assert_eq!(out[0]["name"], json!("probabilities"));
    assert_eq!(out[0]["datatype"], json!("FP32"));
    assert_eq!(out[0]["shape"], json!([2, 3]));
    assert_eq!(out[1]["name"], json!("attention"));
    assert_eq!(out[1]["shape"], json!([2, 1, 2, 2]));
    assert_eq!(out[1]["data"].as_array().unwrap().len(), 8);
    let probs: Vec<f64> = out[0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!((probs[..3].iter().sum::<f64>() - 1.0).abs() < 1e-5 && (probs[3..].iter().sum::<f64>() - 1.0).abs() < 1e-5);
    let v1 = call(&s.app, post("/api/v1/predict", png)).await.json();
    for (a, b) in probs[..3].iter().zip(probabilities(&v1["results"][0])) {
        assert!((a - b).abs() < 1e-5, "v2 {probs:?} vs v1 {}", v1["results"][0]);
    }

    // Nested row-major data is the same tensor; one output can be asked for alone.
    let nested: Vec<Vec<Vec<Vec<f32>>>> =
        vec![vec![plane.chunks(SIZE as usize).map(<[f32]>::to_vec).collect()]];
    let mut req = infer_request(1, json!(nested));
    req["outputs"] = json!([{ "name": "probabilities" }]);
    let one = call(&s.app, post_json("/v2/models/magsd/infer", &req)).await.json();
    assert_eq!(one["outputs"].as_array().unwrap().len(), 1);
    let p1: Vec<f64> = one["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    for (a, b) in p1.iter().zip(&probs[..3]) {
        assert!((a - b).abs() < 1e-5);
    }

    // The spec's own example request (UINT32 "input0" [2, 2], BOOL "input1") and other misfits
    // are refused in the protocol's error shape.
    let spec_example = json!({
        "id": "42",
        "inputs": [
            { "name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4] },
            { "name": "input1", "shape": [3], "datatype": "BOOL", "data": [true] }
        ],
        "outputs": [{ "name": "output0" }]
    });
    let mut wrong_type = infer_request(1, json!(plane));
    wrong_type["inputs"][0]["datatype"] = json!("FP16");
    let mut wrong_shape = infer_request(1, json!(plane));
    wrong_shape["inputs"][0]["shape"] = json!([1, 3, SIZE, SIZE]);
    let mut wrong_output = infer_request(1, json!(plane));
    wrong_output["outputs"] = json!([{ "name": "logits" }]);
    let cases = [
        (spec_example, "exactly one input tensor"),
        (infer_request(2, json!(plane)), "needs 8192"),
        (wrong_type, "this model takes FP32"),
        (wrong_shape, "takes [N, 1, 64, 64]"),
        (wrong_output, "unknown output 'logits'"),
        (infer_request(1, json!(vec!["a"; 4096])), "expected numbers"),
        (json!({ "inputs": "nope" }), "not an inference request"),
    ];
    for (req, says) in cases {
        let a = call(&s.app, post_json("/v2/models/magsd/infer", &req)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{says}: {}", a.text);
        assert!(a.error().contains(says), "{says}: {}", a.text);
    }
    let a = call(&s.app, post_json("/v2/models/other/infer", &infer_request(1, json!(plane)))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[test]
fn ctrl_c_style_shutdown_finishes_requests_in_flight() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, loaded) = loaded_with(|_| {});
    let state = loaded.state.clone();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/api/v1/predict", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(magsd::serve::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    // A request arrives; the model thread is not running yet, so it stays in flight.
    let client = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut res = agent.post(&url).send(&phantom_png(64)[..]).unwrap();
        (res.status().as_u16(), res.body_mut().read_to_string().unwrap())
    });
    while state.batcher.queue_length() < 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.send(()).unwrap(); // what Ctrl-C does
    std::thread::sleep(Duration::from_millis(100));
    assert!(!server.is_finished(), "the server waits for the request in flight");
    loaded.start().unwrap();
    let (status, body) = client.join().unwrap();
    assert_eq!(status, 200, "{body}");
    rt.block_on(server).unwrap().unwrap();
}

#[test]
fn over_the_socket_the_body_limit_answers_413_in_json() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = server_with(|o| o.limits.max_body_bytes = 100_000);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(magsd::serve::serve(listener, s.state.clone(), async {
        let _ = stopped.await;
    }));
    // A Content-Length over the limit: the limit layer refuses before reading the body.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 200000\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body: Value = serde_json::from_str(&text[text.find("{").unwrap()..]).unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit of 100000 bytes"), "{body}");
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
}

#[test]
fn the_command_says_how_to_get_a_model_and_measures_itself_on_loopback() {
    let magsd = common::magsd;
    let o = magsd(&["serve"]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("magsd demo") && text.contains("runs/demo-<time>/train/model.safetensors"), "{text}");
    let help = magsd(&["serve", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));

    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let o = magsd(&[
        "serve", "--model", model.to_str().unwrap(), "--device", "cpu", "--load-test", "--concurrency", "1,3", "--requests", "6",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (l, c) in lines.iter().zip([1, 3]) {
        assert_eq!(l["concurrency"], json!(c));
        assert_eq!((l["requests"].as_u64(), l["ok"].as_u64()), (Some(6), Some(6)), "{l}");
        assert!(l["requests_per_s"].as_f64().unwrap() > 0.0 && l["p99_ms"].as_f64().unwrap() >= l["p50_ms"].as_f64().unwrap());
        let mean_batch = l["mean_batch"].as_f64().unwrap();
        assert!((1.0..=c as f64).contains(&mean_batch), "{l}");
    }
}

/// A preprocessed phantom as the server prepares uploads, and its `/api/v1/predict` probabilities.
async fn phantom_plane_and_v1(s: &Server, size: usize) -> (Vec<f32>, Vec<f64>) {
    let png = phantom_png(size);
    let pipeline = InputPipeline { preprocess: s.state.config.preprocess(), ..Default::default() };
    let plane = pipeline.eval_plane(&decode_bytes(Path::new("p.png"), &png, &DecodeLimits::default()).unwrap()).data;
    let v1 = call(&s.app, post("/api/v1/predict", png)).await.json();
    (plane, probabilities(&v1["results"][0]))
}

/// A body of the binary tensor extension: the JSON, then `tail`; with its header.
fn binary_request(uri: &str, json: &Value, tail: &[u8]) -> Request<Body> {
    let head = json.to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(tail);
    Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("Inference-Header-Content-Length", head.len())
        .body(Body::from(body))
        .unwrap()
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Splits a binary-extension answer into its JSON and its binary tail.
fn split_answer(a: &Answer, raw: &[u8]) -> (Value, Vec<u8>) {
    let n: usize = a.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    (serde_json::from_slice(&raw[..n]).unwrap(), raw[n..].to_vec())
}

async fn call_raw(app: &Router, req: Request<Body>) -> (Answer, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap().to_vec();
    (Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }, bytes)
}

#[tokio::test]
async fn kserve_binary_tensors_in_and_out_as_triton_sends_them() {
    let s = server_with(|_| {});
    let (plane, v1) = phantom_plane_and_v1(&s, 90).await;
    let other: Vec<f32> = (0..SIZE * SIZE).map(|i| ((i % 13) as f32 - 6.0) / 4.0).collect();
    let both: Vec<f32> = plane.iter().chain(&other).copied().collect();
    let bytes = (both.len() * 4) as u64;

    // Binary input, binary outputs (tritonclient's default: binary_data on each output).
    let req = json!({
        "id": "7",
        "inputs": [{ "name": "input", "shape": [2, 1, SIZE, SIZE], "datatype": "FP32", "parameters": { "binary_data_size": bytes } }],
        "outputs": [{ "name": "probabilities", "parameters": { "binary_data": true } }, { "name": "attention", "parameters": { "binary_data": true } }]
    });
    let (a, raw) = call_raw(&s.app, binary_request("/v2/models/magsd/infer", &req, &le_bytes(&both))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/octet-stream");
    let (head, tail) = split_answer(&a, &raw);
    assert_eq!(head["id"], json!("7"));
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], json!(2 * 3 * 4));
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], json!(2 * 4 * 4));
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(tail.len(), 24 + 32, "outputs' bytes follow the JSON in the order of the outputs");
    let probs: Vec<f32> = tail[..24].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    for (a, b) in probs[..3].iter().zip(&v1) {
        assert!((*a as f64 - b).abs() < 1e-5, "binary {probs:?} vs v1 {v1:?}");
    }

    // JSON input, binary_data_output on the request, one output back as JSON by its own flag.
    let req = json!({
        "inputs": [{ "name": "input", "shape": [2, 1, SIZE, SIZE], "datatype": "FP32", "data": both }],
        "outputs": [{ "name": "attention" }, { "name": "probabilities", "parameters": { "binary_data": false } }],
        "parameters": { "binary_data_output": true }
    });
    let (a, raw) = call_raw(&s.app, post_json("/v2/models/magsd/infer", &req)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let (head, tail) = split_answer(&a, &raw);
    assert_eq!(head["outputs"][0]["name"], json!("attention"));
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], json!(32));
    assert_eq!(tail.len(), 32);
    let p_json: Vec<f64> = head["outputs"][1]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    for (a, b) in p_json.iter().zip(&probs) {
        assert!((a - *b as f64).abs() < 1e-6);
    }

    // Binary input with JSON outputs: the answer is plain JSON, without the header.
    let req = json!({ "inputs": [{ "name": "input", "shape": [1, 1, SIZE, SIZE], "datatype": "FP32", "parameters": { "binary_data_size": plane.len() * 4 } }] });
    let (a, _) = call_raw(&s.app, binary_request("/v2/models/magsd/versions/1/infer", &req, &le_bytes(&plane))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.headers.get("inference-header-content-length").is_none());
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(a.json()["outputs"].as_array().unwrap().len(), 2);

    // What Triton refuses, refused with the reason.
    let one = |params: Value| json!({ "inputs": [{ "name": "input", "shape": [1, 1, SIZE, SIZE], "datatype": "FP32", "parameters": params }] });
    let size = plane.len() * 4;
    let no_header = post_json("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size })));
    let cases: Vec<(Request<Body>, &str)> = vec![
        (no_header, "no Inference-Header-Content-Length"),
        (binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size - 4 })), &le_bytes(&plane)), "needs 16384 bytes"),
        (binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size })), &le_bytes(&plane[1..])), "the body has 16380"),
        (binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size })), &le_bytes(&both)), "belong to no input"),
        (binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": "big" })), &[]), "must be a byte count"),
        (binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size })), &le_bytes(&[f32::NAN; 4096])), "not a finite number"),
        (binary_request("/v2/models/magsd/infer", &json!({ "inputs": [{ "name": "input", "shape": [1, 1, SIZE, SIZE], "datatype": "FP32", "data": plane, "parameters": { "binary_data_size": size } }] }), &le_bytes(&plane)), "set both"),
    ];
    for (req, says) in cases {
        let a = call(&s.app, req).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{says}: {}", a.text);
        assert!(a.error().contains(says), "{says}: {}", a.text);
    }
    let mut lying = binary_request("/v2/models/magsd/infer", &one(json!({ "binary_data_size": size })), &le_bytes(&plane));
    lying.headers_mut().insert("inference-header-content-length", "99999999".parse().unwrap());
    assert!(call(&s.app, lying).await.error().contains("longer than the whole body"));
}

#[tokio::test]
async fn kserve_versions_statistics_configuration_and_other_extensions() {
    let s = server_with(|_| {});
    let server = call(&s.app, get("/v2")).await.json();
    assert_eq!(server["extensions"], json!(["binary_tensor_data", "statistics", "model_configuration"]));
    // The version metadata lists is served under /versions/1; any other is a clear 404.
    assert_eq!(call(&s.app, get("/v2/models/magsd/versions/1/ready")).await.json(), json!({ "name": "magsd", "ready": true }));
    assert_eq!(call(&s.app, get("/v2/models/magsd/versions/1")).await.json()["versions"], json!(["1"]));
    for uri in ["/v2/models/magsd/versions/2/ready", "/v2/models/magsd/versions/2", "/v2/models/magsd/versions/0/config", "/v2/models/magsd/versions/3/stats"] {
        let a = call(&s.app, get(uri)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(a.error().contains("serves its version 1 only"), "{uri}: {}", a.text);
    }
    let plane = vec![0.25f32; (SIZE * SIZE) as usize];
    let a = call(&s.app, post_json("/v2/models/magsd/versions/2/infer", &infer_request(1, json!(plane)))).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    // Statistics count what the model did, in Triton's model_stats shape.
    let empty = call(&s.app, get("/v2/models/magsd/stats")).await.json();
    assert_eq!(empty["model_stats"][0]["inference_count"], json!(0));
    let four: Vec<f32> = plane.iter().cycle().take(4 * plane.len()).copied().collect();
    assert_eq!(call(&s.app, post_json("/v2/models/magsd/versions/1/infer", &infer_request(4, json!(four)))).await.status, StatusCode::OK);
    for uri in ["/v2/models/stats", "/v2/models/magsd/stats", "/v2/models/magsd/versions/1/stats"] {
        let st = call(&s.app, get(uri)).await.json();
        let m = &st["model_stats"][0];
        assert_eq!((m["name"].as_str(), m["version"].as_str()), (Some("magsd"), Some("1")), "{uri}");
        assert_eq!(m["inference_count"], json!(4), "{st}");
        let batches = m["execution_count"].as_u64().unwrap();
        assert!((1..=4).contains(&batches), "{st}");
        let is = &m["inference_stats"];
        assert_eq!(is["success"]["count"], json!(4));
        assert_eq!(is["fail"], json!({ "count": 0, "ns": 0 }));
        assert_eq!(is["queue"]["count"], json!(4));
        assert_eq!(is["compute_infer"]["count"], json!(batches));
        assert!(is["compute_infer"]["ns"].as_u64().unwrap() > 0);
        let per_size: u64 = m["batch_stats"].as_array().unwrap().iter().map(|b| b["batch_size"].as_u64().unwrap() * b["compute_infer"]["count"].as_u64().unwrap()).sum();
        assert_eq!(per_size, 4, "{st}");
        assert!(m["last_inference"].as_u64().unwrap() > 1_600_000_000_000);
    }

    // The model configuration, Triton's shape: dims without the batch dimension.
    let cfg = call(&s.app, get("/v2/models/magsd/versions/1/config")).await.json();
    assert_eq!(cfg["max_batch_size"], json!(4));
    assert_eq!(cfg["input"][0], json!({ "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, SIZE, SIZE] }));
    assert_eq!(cfg["output"][0]["dims"], json!([3]));
    assert_eq!(cfg["dynamic_batching"]["max_queue_delay_microseconds"], json!(2000));

    // Other extensions: 400 with the list of what this server has.
    for (method, uri) in [("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/magsd/unload"), ("GET", "/v2/systemsharedmemory/status"), ("GET", "/v2/trace/setting"), ("POST", "/v2/models/magsd/generate")] {
        let a = call(&s.app, Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(a.error().contains("its extensions are binary_tensor_data, statistics, model_configuration"), "{uri}: {}", a.text);
    }
    let mut classify = infer_request(1, json!(plane));
    classify["outputs"] = json!([{ "name": "probabilities", "parameters": { "classification": 2 } }]);
    assert!(call(&s.app, post_json("/v2/models/magsd/infer", &classify)).await.error().contains("'classification' extension"));
}

#[tokio::test]
async fn kserve_shapes_that_overflow_ragged_rows_and_too_many_images_are_refused() {
    let s = server_with(|_| {});
    let plane = vec![0.5f32; (SIZE * SIZE) as usize];
    let mut overflow = infer_request(1, json!(plane));
    overflow["inputs"][0]["shape"] = json!([(1u64 << 54) + 1, 1, SIZE, SIZE]);
    let a = call(&s.app, post_json("/v2/models/magsd/infer", &overflow)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.error().contains("does not fit in 64 bits"), "{}", a.text);

    // Rows of 63 and 65 values: 4096 in all, as the shape needs, but not a [1, 1, 64, 64] tensor.
    let mut rows: Vec<Vec<f32>> = (0..SIZE).map(|_| vec![0.5; SIZE as usize]).collect();
    rows[0].pop();
    rows[1].push(0.5);
    let a = call(&s.app, post_json("/v2/models/magsd/infer", &infer_request(1, json!([[rows]])))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.error().contains("ragged"), "{}", a.text);

    // More images than --max-parts (16 here): 413 before any data is read.
    let mut many = infer_request(1, json!(plane));
    many["inputs"][0]["shape"] = json!([17, 1, SIZE, SIZE]);
    let a = call(&s.app, post_json("/v2/models/magsd/infer", &many)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert!(a.error().contains("at most 16 (--max-parts)"), "{}", a.text);
}

#[tokio::test]
async fn uploads_over_the_part_and_pixel_limits_get_413_and_warnings_are_reported() {
    let s = server_with(|o| {
        o.limits.max_parts = 3;
        o.limits.max_request_pixels = 250 * 250;
    });
    let small = phantom_png(64);
    let files: Vec<(&str, &[u8])> = (0..4).map(|_| ("x.png", &small[..])).collect();
    let a = call(&s.app, multipart(&files)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert!(a.error().contains("at most 3 (--max-parts)"), "{}", a.text);
    assert_eq!(call(&s.app, multipart(&files[..3])).await.status, StatusCode::OK);

    // Two 200×200 images: 80,000 pixels, above the 62,500 of one request; each alone fits.
    let big = phantom_png(200);
    let a = call(&s.app, multipart(&[("a.png", &big), ("b.png", &big)])).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert!(a.error().contains("80000 pixels in all, above this server's limit of 62500 per request"), "{}", a.text);
    assert_eq!(call(&s.app, multipart(&[("a.png", &big)])).await.status, StatusCode::OK);
    assert_eq!(s.state.decode_budget.available_permits(), 250 * 250, "the decode budget is given back");

    // A truncated JPEG is used, and says so, as `magsd eval` does.
    let jpg = encode(image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(96, 96, |x, y| image::Luma([(x * 2 + y) as u8]))), image::ImageFormat::Jpeg);
    let a = call(&s.app, post("/api/v1/predict?filename=cut.jpg", jpg[..jpg.len() * 2 / 3].to_vec())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let w = &a.json()["results"][0]["warnings"];
    assert!(w[0].as_str().unwrap().contains("truncated JPEG"), "{w}");
    let whole = call(&s.app, post("/api/v1/predict", jpg)).await.json();
    assert_eq!(whole["results"][0]["warnings"], json!([]));
}

fn with_headers(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn host_names_other_than_localhost_ips_and_allowed_ones_are_refused() {
    let s = server_with(|o| o.allow_hosts = vec!["xray.example.org".into()]);
    for ok in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "192.168.1.20:8080", "XRAY.example.org"] {
        assert_eq!(call(&s.app, with_headers("/api/v1/model", &[("host", ok)])).await.status, StatusCode::OK, "{ok}");
    }
    // What a DNS-rebinding page sends: its own name, pointed at 127.0.0.1.
    for bad in ["attacker.example:8080", "localhost.attacker.example"] {
        for uri in ["/api/v1/model", "/", "/v2/health/ready"] {
            let a = call(&s.app, with_headers(uri, &[("host", bad)])).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{bad} {uri}");
            assert!(a.error().contains("--allow-host"), "{}", a.text);
        }
    }
    let m = call(&s.app, get("/metrics")).await.text;
    assert!(m.contains("magsd_errors_total{kind=\"forbidden_host\"} 6"), "{m}");
}

#[tokio::test]
async fn an_empty_token_is_refused_and_the_card_shows_paths_only_with_a_token_or_the_flag() {
    for empty in ["", "  "] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(&tiny_model(dir.path()));
        o.token = Some(empty.into());
        let e = load(&o).err().expect("an empty token is refused").to_string();
        assert!(e.contains("the token is empty"), "{e}");
    }
    // A model in its run folder, whose run.json names the data and the command.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    common::run_json(dir.path(), Path::new("/srv/private/cxr/manifest.csv"), &CLASSES, 0, "magsd train --data /srv/private/cxr");
    let card = |token: Option<&str>, show_paths: bool| {
        let mut o = options(&model);
        o.token = token.map(str::to_string);
        o.show_paths = show_paths;
        load(&o).unwrap().state.card.clone()
    };
    let open = card(None, false);
    assert_eq!(open.file, "model.safetensors");
    let t = open.training.as_ref().unwrap();
    assert_eq!((t.data.as_str(), t.command.as_deref()), ("manifest.csv", None));
    assert!(!serde_json::to_string(&open).unwrap().contains("/srv/private"));
    for shown in [card(Some("s3cret"), false), card(None, true)] {
        assert_eq!(shown.file, model.display().to_string());
        let t = shown.training.unwrap();
        assert_eq!((t.data.as_str(), t.command.as_deref()), ("/srv/private/cxr/manifest.csv", Some("magsd train --data /srv/private/cxr")));
    }
}

/// A fold model named by its fold folder (`RUN/fold-K`) has its run's training on the card.
#[test]
fn a_fold_models_card_has_its_runs_training() {
    let dir = tempfile::tempdir().unwrap();
    let fold = dir.path().join("fold-0");
    std::fs::create_dir_all(&fold).unwrap();
    let model = tiny_model(&fold);
    common::run_json(dir.path(), Path::new("manifest.csv"), &CLASSES, 2, "magsd train");
    for arg in [fold.clone(), model] {
        let card = load(&options(&arg)).unwrap().state.card.clone();
        let t = card.training.unwrap_or_else(|| panic!("--model {}: no training on the card", arg.display()));
        assert_eq!((t.folds, t.data.as_str()), (2, "manifest.csv"));
    }
}

/// A server on a loopback socket, with its address and the stop switch.
struct Listening {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    rt: tokio::runtime::Runtime,
    _s: Server,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.rt.block_on(self.task.take().unwrap());
    }
}

fn listening(s: Server) -> Listening {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(magsd::serve::serve(listener, s.state.clone(), async {
        let _ = stopped.await;
    }));
    Listening { addr, stop: Some(stop), task: Some(task), rt, _s: s }
}

#[test]
fn a_connection_trickling_its_headers_is_cut_at_the_timeout() {
    let l = listening(server_with(|o| o.limits.timeout = Duration::from_millis(800)));
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(l.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut closed_after = None;
    'trickle: for i in 0..200 {
        let byte = head.get(i).copied().unwrap_or(b'a');
        if tcp.write_all(&[byte]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tcp.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(start.elapsed());
                break 'trickle;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(start.elapsed());
                break 'trickle;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = closed_after.expect("the server kept a connection trickling its headers for 20 s");
    assert!(t >= Duration::from_millis(700) && t < Duration::from_secs(3), "closed after {t:?}");
    // The server still answers.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    assert_eq!(agent.get(&format!("http://{}/healthz", l.addr)).call().unwrap().status().as_u16(), 200);
}

/// The fenced `sh` blocks of the README's `magsd serve` section that call curl.
fn readme_curl_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## magsd serve").expect("the README has a magsd serve section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + 6..];
        let end = body.find("```").expect("closed fence");
        if body[..end].contains("curl ") {
            blocks.push(body[..end].to_string());
        }
        rest = &body[end + 3..];
    }
    blocks
}

/// Installs curl from Debian's packages unless it is there.
fn ensure_curl() {
    if std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return;
    }
    for args in [vec!["update"], vec!["install", "-y", "curl"]] {
        let status = std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("runs apt-get");
        assert!(status.success(), "apt-get {args:?} failed");
    }
}

#[test]
fn every_curl_example_of_the_readme_runs_as_written() {
    ensure_curl();
    let blocks = readme_curl_blocks();
    assert!(blocks.len() >= 2, "{blocks:?}");
    // A model as the README's examples assume it: 224 px input, 3 classes, named `magsd`.
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(&dir.path().join("m224.safetensors"), 224, &CLASSES);
    let state = load(&options(&model)).unwrap().start().unwrap();
    let l224 = listening(Server { _dir: tempfile::tempdir().unwrap(), app: router(state.clone()), state });
    // The files the examples upload, and curl told to fail on an HTTP error (it reads .curlrc
    // from CURL_HOME), so that a refused example fails its block.
    std::fs::write(dir.path().join("chest.png"), phantom_png(160)).unwrap();
    std::fs::write(dir.path().join("a.png"), phantom_png(120)).unwrap();
    std::fs::write(dir.path().join("b.dcm"), phantom_dicom(96)).unwrap();
    std::fs::write(dir.path().join(".curlrc"), "fail\nmax-time = 60\n").unwrap();
    for block in blocks {
        let script = block.replace("127.0.0.1:8080", &l224.addr.to_string());
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("CURL_HOME", dir.path())
            .env("MAGSD_TOKEN", "unused-by-a-server-without-a-token")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "this README block failed ({}):\n{block}\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.trim().is_empty(), "no output from:\n{block}");
    }
    // The binary example's answer: the JSON, then 3 floats that sum to 1.
    let answer = std::fs::read(dir.path().join("answer.bin")).unwrap();
    let p: Vec<f32> = answer[answer.len() - 12..].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{p:?}");
}

/// `serve --map` picks the map behind the heatmaps and boxes, as `predict --map` does: the
/// layer3 head's map is twice as fine as the mean map, and without `--map` an MA-Net serves its
/// evidence map, on the finest head's grid (issue 20).
#[tokio::test]
async fn serve_map_picks_the_map_behind_heatmaps_and_boxes() {
    use magsd::model::MapKind;
    let mut sides = Vec::new();
    for map in [Some(MapKind::Mean), Some(MapKind::Scale14), None] {
        let s = server_with(|o| o.map = map);
        assert_eq!(s.state.batching.map, map.unwrap_or(MapKind::Evidence));
        let rx = s.state.batcher.submit((vec![0.0; (SIZE * SIZE) as usize], None)).unwrap();
        let inf = rx.await.unwrap().unwrap();
        assert_eq!(inf.attention.len(), inf.attention_grid.side * inf.attention_grid.side);
        sides.push(inf.attention_grid.side);
    }
    assert_eq!(sides, [SIZE as usize / 32, SIZE as usize / 16, SIZE as usize / 16], "mean, scale14, default");
}

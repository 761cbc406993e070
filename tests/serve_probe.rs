//! A hostile probe of `magsd serve`, run as its own process so that its memory and CPU time can
//! be read from /proc: oversized requests (a body over the limit, 1,000 parts, 100 images whose
//! headers claim 8000×8000 16-bit RGBA), slow ones (headers and body sent a byte at a time),
//! malformed ones (KServe shapes that overflow, ragged rows, lying lengths, garbage images, a
//! foreign Host), and heavy valid ones several at once (a 16 M pixel 16-bit RGBA PNG each). Bounded in count and time (about half a
//! minute). It checks that every answer is the expected refusal, that `/healthz` keeps answering
//! quickly throughout, that the peak resident memory stays under the bound the README derives
//! from the limits, and that a request that timed out stops using the CPU.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

const MB: u64 = 1 << 20;

/// The two probes run one after the other: each measures its own server's CPU and memory.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `magsd serve` process on 127.0.0.1, killed when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(model: &std::path::Path, args: &[&str]) -> Served {
        let mut child = Command::new(common::BIN)
            .args(["serve", "--model", model.to_str().unwrap(), "--device", "cpu", "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 512];
        let addr = loop {
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "magsd serve ended before serving: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(i) = seen.find("serving on http://") {
                let rest = &seen[i + 18..];
                if let Some(end) = rest.find('/') {
                    break rest[..end].to_string();
                }
            }
        };
        std::thread::spawn(move || while out.read(&mut buf).is_ok_and(|n| n > 0) {});
        Served { child, addr }
    }

    fn status_kb(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc status"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Peak resident memory so far, in bytes.
    fn peak_rss(&self) -> u64 {
        self.status_kb("VmHWM:") * 1024
    }

    fn rss(&self) -> u64 {
        self.status_kb("VmRSS:") * 1024
    }

    /// User + system CPU seconds of the process so far.
    fn cpu_s(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

/// Sends `bytes` and reads the answer's status and body (None: the connection was closed
/// without an answer).
fn raw(addr: &str, bytes: &[u8], wait: Duration) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(wait)).unwrap();
    if tcp.write_all(bytes).is_err() {
        return None;
    }
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, text))
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

fn multipart(parts: &[&[u8]]) -> (String, Vec<u8>) {
    let boundary = "probe-boundary-51f0";
    let mut body = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p{i}.png\"\r\n\r\n").as_bytes());
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn healthz_ms(addr: &str) -> Option<u128> {
    let t = Instant::now();
    let (status, _) = raw(addr, &request("GET", "/healthz", &[], b""), Duration::from_secs(5))?;
    (status == 200).then(|| t.elapsed().as_millis())
}

/// Polls `/healthz` every 100 ms until stopped; returns the slowest answer, or panics on none.
fn watch_health(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u128> {
    std::thread::spawn(move || {
        let mut worst = 0;
        while !stop.load(Ordering::SeqCst) {
            let ms = healthz_ms(&addr).expect("/healthz stopped answering");
            worst = worst.max(ms);
            std::thread::sleep(Duration::from_millis(100));
        }
        worst
    })
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 };
        }
    }
    !c
}

/// A 60-byte PNG whose header claims `w × h` 16-bit RGBA and whose data is cut.
fn claimed_png(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        png.extend_from_slice(&c);
        png.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x00]);
    png
}

/// A real `side × side` 16-bit RGBA PNG: a vertical gradient, so that it decodes to a real
/// image but compresses to little (each row is one colour).
fn rgba16_png(side: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(side, side, |_, y| {
        let v = (y % 4096) as u16 * 16;
        image::Rgba([v, v, v, 65535])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba16(img).write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn tiny_model(dir: &std::path::Path) -> std::path::PathBuf {
    common::tiny_model(&dir.join("model.safetensors"), 64, &[])
}

#[test]
fn oversized_slow_and_malformed_requests_are_refused_within_bounded_memory_and_time() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let timeout_s = 2;
    let (max_body_mb, max_request_pixels) = (16u64, 16_000_000u64);
    let s = Served::start(
        &model,
        &["--timeout-s", "2", "--max-body-mb", "16", "--max-pixels", "16000000", "--max-request-pixels", "16000000", "--max-parts", "8"],
    );
    let addr = s.addr.clone();
    let baseline = s.rss();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let health = watch_health(addr.clone(), stop.clone());
    let expect = |what: &str, bytes: &[u8], statuses: &[u16]| {
        let got = raw(&addr, bytes, Duration::from_secs(10));
        match &got {
            Some((st, text)) => assert!(statuses.contains(st), "{what}: {st} {}", &text[..text.len().min(400)]),
            None => panic!("{what}: no answer"),
        }
    };

    // Oversized.
    let huge = format!("POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", 200 * MB);
    expect("a body of 200 MB announced", huge.as_bytes(), &[413]);
    let dot: &[u8] = b"x";
    let (ct, body) = multipart(&vec![dot; 1000]);
    expect("1,000 parts", &request("POST", "/api/v1/predict", &[("Content-Type", ct)], &body), &[413]);
    let fake = claimed_png(4000, 4000);
    let (ct, body) = multipart(&[&fake[..]; 8]);
    expect("8 images claiming 4000×4000 16-bit RGBA (128 M pixels)", &request("POST", "/api/v1/predict?heatmap=true", &[("Content-Type", ct)], &body), &[413]);
    let (ct, body) = multipart(&[&claimed_png(8000, 8000)[..]]);
    expect("one image claiming 8000×8000", &request("POST", "/api/v1/predict", &[("Content-Type", ct)], &body), &[400]);

    // Malformed.
    let infer = |json: &str| request("POST", "/v2/models/magsd/infer", &[("Content-Type", "application/json".into())], json.as_bytes());
    let plane = vec!["0.5"; 64 * 64].join(",");
    expect("a KServe shape that overflows", &infer(&format!(r#"{{"inputs":[{{"name":"input","shape":[18014398509481985,1,64,64],"datatype":"FP32","data":[{plane}]}}]}}"#)), &[400]);
    let ragged = format!("[[{}],[{}]]", vec!["1"; 2047].join(","), vec!["1"; 2049].join(","));
    expect("ragged rows", &infer(&format!(r#"{{"inputs":[{{"name":"input","shape":[1,1,64,64],"datatype":"FP32","data":{ragged}}}]}}"#)), &[400]);
    expect("1,000 images in a KServe shape", &infer(r#"{"inputs":[{"name":"input","shape":[1000,1,64,64],"datatype":"FP32","data":[1]}]}"#), &[413]);
    expect("not JSON", &infer("{\"inputs\": [ nope"), &[400]);
    let lying = request("POST", "/v2/models/magsd/infer", &[("Inference-Header-Content-Length", "4000000000".into())], b"{}");
    expect("a lying Inference-Header-Content-Length", &lying, &[400]);
    expect("garbage as an image", &request("POST", "/api/v1/predict", &[], &[0x42; 5000]), &[400]);
    expect("half a PNG", &request("POST", "/api/v1/predict", &[], &rgba16_png(64)[..300]), &[400]);
    expect("a foreign Host", b"GET /api/v1/model HTTP/1.1\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n", &[403]);
    expect("a request line of 100 KB", format!("GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "a".repeat(100_000)).as_bytes(), &[404, 414, 431]);

    // Slow: headers, then a body, a byte every 100 ms; both cut at the timeout.
    for (what, head, trickle) in [
        ("headers", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec(), b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec()),
        ("body", b"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n".to_vec(), vec![0x89; 100]),
    ] {
        let mut tcp = TcpStream::connect(&addr).unwrap();
        tcp.write_all(&head).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let t = Instant::now();
        let mut cut = None;
        for b in trickle {
            if tcp.write_all(&[b]).is_err() {
                cut = Some(t.elapsed());
                break;
            }
            let mut buf = [0u8; 512];
            match tcp.read(&mut buf) {
                Ok(_) => {
                    cut = Some(t.elapsed()); // an answer (408) or a close
                    break;
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => {
                    cut = Some(t.elapsed());
                    break;
                }
            }
        }
        let cut = cut.unwrap_or_else(|| panic!("a {what} trickle was not cut in {:?}", t.elapsed()));
        assert!(cut < Duration::from_secs(timeout_s + 2), "a {what} trickle was cut only after {cut:?}");
    }

    // Heavy but valid: a 4000×4000 16-bit RGBA PNG (16 M pixels, the request limit) with a
    // heatmap, four requests at once; they share the decode budget.
    let big = rgba16_png(4000);
    let (ct, body) = multipart(&[&big[..]]);
    let heavy = request("POST", "/api/v1/predict?heatmap=true", &[("Content-Type", ct)], &body);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, heavy) = (addr.clone(), heavy.clone());
            std::thread::spawn(move || raw(&addr, &heavy, Duration::from_secs(20)).map(|(st, _)| st))
        })
        .collect();
    for c in clients {
        let st = c.join().unwrap();
        assert!(matches!(st, Some(200) | Some(408)), "a heavy request got {st:?}");
    }

    stop.store(true, Ordering::SeqCst);
    let worst_health_ms = health.join().unwrap();
    assert!(worst_health_ms < 2000, "/healthz took {worst_health_ms} ms while the probe ran");
    // The README's bound: bodies in flight, 10 bytes per decoded pixel of the shared budget,
    // and 64 MB for decoder scratch and allocator slack, above the idle server.
    let bound = baseline + 4 * max_body_mb * MB + 10 * max_request_pixels + 64 * MB;
    let peak = s.peak_rss();
    println!(
        "probe: {:.1} s, idle RSS {} MB, peak RSS {} MB (bound {} MB), slowest /healthz {worst_health_ms} ms",
        started.elapsed().as_secs_f64(),
        baseline / MB,
        peak / MB,
        bound / MB
    );
    assert!(peak <= bound, "peak RSS {} MB above the bound of {} MB", peak / MB, bound / MB);
}

#[test]
fn a_request_that_timed_out_stops_using_the_cpu() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 100 images of 3000×3000 16-bit RGBA (a 900 M pixel request, allowed here) take tens of
    // CPU seconds to decode; the request times out after 2 s, and the work must stop with it.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let s = Served::start(
        &model,
        &["--timeout-s", "2", "--max-request-pixels", "900000000", "--max-pixels", "9000000", "--max-parts", "100", "--queue", "128"],
    );
    let img = rgba16_png(3000);
    let (ct, body) = multipart(&vec![&img[..]; 100]);
    let t = Instant::now();
    let answer = raw(&s.addr, &request("POST", "/api/v1/predict?heatmap=true", &[("Content-Type", ct)], &body), Duration::from_secs(30));
    let took = t.elapsed();
    assert_eq!(answer.as_ref().map(|a| a.0), Some(408), "{:?}", answer.map(|a| a.1.chars().take(300).collect::<String>()));
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // The decodes running at the timeout finish (one image each, about a second on a busy
    // machine); after them the server is idle, where without cancelling it went on decoding.
    std::thread::sleep(Duration::from_secs(3));
    let before = s.cpu_s();
    std::thread::sleep(Duration::from_secs(2));
    let used = s.cpu_s() - before;
    println!("from 3 to 5 s after the 408: {used:.2} CPU s; peak RSS {} MB", s.peak_rss() / MB);
    assert!(used < 0.1, "the server used {used:.2} CPU s between 3 and 5 s after the request timed out");
    assert!(healthz_ms(&s.addr).is_some());
}

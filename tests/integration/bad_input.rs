//! A corpus of bad and odd input, generated here, sent to `POST /classify` over a real socket:
//! truncated and corrupted JPEG and PNG, non-images, wrong media types, decompression bombs,
//! animated GIF, extreme shapes, CMYK / grayscale / 16-bit / alpha, bad base64, JSON and
//! multipart, bad queries, oversized and slow bodies. Every answer is the expected status with a
//! JSON error (or a classification where the input is odd but valid), within a bounded time,
//! and the server is healthy afterwards. Malformed tensors over the Open Inference Protocol (REST
//! and gRPC) and bad gRPC requests are in tests/integration/oip.rs and tests/integration/grpc.rs.

use crate::common;

use common::images::png_claiming;
use common::serving::{config, jpegs, pool, serve_http, SMALL};

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use image::codecs::gif::{GifEncoder, Repeat};
use image::{DynamicImage, Frame, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use mobilenet_serve::serving::Service;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any answer may take; the slow-body case waits for the request timeout below.
const BOUND: Duration = Duration::from_secs(10);
/// The server's request timeout here, which slow bodies run into.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What a case must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A classification.
    Ok,
    /// This status with a JSON error of this code.
    Error(u16, &'static str),
    /// Either a classification or this error: a damaged file a decoder may still read in part.
    OkOr(u16, &'static str),
}

struct Case {
    name: String,
    query: String,
    content_type: String,
    body: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, content_type: &str, body: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        query: format!("model={SMALL}"),
        content_type: content_type.into(),
        body,
        expect,
    }
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 99])
    })
}

fn animated_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut gif = GifEncoder::new(&mut out);
        gif.set_repeat(Repeat::Infinite).unwrap();
        for shade in [0u8, 120, 240] {
            let frame = RgbaImage::from_pixel(40, 30, Rgba([shade, 80, 200 - shade / 2, 255]));
            gif.encode_frame(Frame::new(frame)).unwrap();
        }
    }
    out
}

/// Deterministic byte positions for the corruption cases.
fn positions(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % len as u64) as usize
        })
        .collect()
}

fn multipart(boundary: &str, parts: &[(&str, &[u8])], close: bool) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"x\"\r\nContent-Type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    if close {
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    }
    body
}

fn corpus() -> Vec<Case> {
    use Expect::*;
    let jpeg = jpegs(1).remove(0);
    let png = encode(
        &DynamicImage::ImageRgb8(pattern(200, 150)),
        ImageFormat::Png,
    );
    let undecodable = Error(400, "undecodable_image");
    let mut cases = vec![
        case("empty body", "image/jpeg", Vec::new(), undecodable),
        case("zero bytes", "image/jpeg", vec![0; 4096], undecodable),
        case(
            "text as an image",
            "image/jpeg",
            b"hello, world".to_vec(),
            undecodable,
        ),
        case(
            "HTML as an image",
            "image/png",
            b"<!doctype html><html><body>hi</body></html>".to_vec(),
            undecodable,
        ),
        case(
            "JSON as an image",
            "application/octet-stream",
            br#"{"image": "not this way"}"#.to_vec(),
            undecodable,
        ),
        case(
            "text/plain",
            "text/plain",
            jpeg.clone(),
            Error(415, "unsupported_media_type"),
        ),
        case(
            "application/xml",
            "application/xml",
            b"<a/>".to_vec(),
            Error(415, "unsupported_media_type"),
        ),
        case(
            "TIFF",
            "image/tiff",
            // A little-endian TIFF header: recognised, not a format we decode.
            b"II*\x00\x08\x00\x00\x00\x00\x00".to_vec(),
            Error(415, "unsupported_image_format"),
        ),
        case(
            "PNG header claiming 65535x65535",
            "image/png",
            png_claiming(65535, 65535),
            Error(413, "too_large"),
        ),
        case(
            "decompression bomb: 10000x10000 of zeros",
            "image/png",
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::new(10_000, 10_000)),
                ImageFormat::Png,
            ),
            Error(413, "too_large"),
        ),
        case(
            "body over the limit",
            "image/jpeg",
            vec![0xff; (1 << 20) + 1],
            Error(413, "too_large"),
        ),
        case(
            "animated GIF (first frame)",
            "image/gif",
            animated_gif(),
            Ok,
        ),
        case(
            "1x1",
            "image/png",
            encode(&DynamicImage::ImageRgb8(pattern(1, 1)), ImageFormat::Png),
            Ok,
        ),
        case(
            "10000x1",
            "image/png",
            encode(
                &DynamicImage::ImageRgb8(pattern(10_000, 1)),
                ImageFormat::Png,
            ),
            Ok,
        ),
        case(
            "1x10000",
            "image/png",
            encode(
                &DynamicImage::ImageRgb8(pattern(1, 10_000)),
                ImageFormat::Png,
            ),
            Ok,
        ),
        case(
            "CMYK JPEG",
            "image/jpeg",
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg"),
            )
            .unwrap(),
            Ok,
        ),
        case(
            "grayscale JPEG",
            "image/jpeg",
            encode(
                &DynamicImage::ImageLuma8(ImageBuffer::from_fn(64, 48, |x, _| Luma([x as u8]))),
                ImageFormat::Jpeg,
            ),
            Ok,
        ),
        case(
            "16-bit grayscale PNG",
            "image/png",
            encode(
                &DynamicImage::ImageLuma16(ImageBuffer::from_fn(64, 48, |x, y| {
                    Luma([(x * 1000 + y) as u16])
                })),
                ImageFormat::Png,
            ),
            Ok,
        ),
        case(
            "RGBA PNG",
            "image/png",
            encode(
                &DynamicImage::ImageRgba8(RgbaImage::from_pixel(50, 40, Rgba([9, 99, 199, 77]))),
                ImageFormat::Png,
            ),
            Ok,
        ),
        case(
            "16-bit RGBA PNG",
            "image/png",
            encode(
                &DynamicImage::ImageRgba16(ImageBuffer::from_pixel(
                    50,
                    40,
                    Rgba([9000u16, 40000, 65535, 30000]),
                )),
                ImageFormat::Png,
            ),
            Ok,
        ),
        case(
            "invalid base64",
            "application/json",
            br#"{"image": "!!!not base64!!!"}"#.to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "base64 of a non-image",
            "application/json",
            br#"{"image": "aGVsbG8="}"#.to_vec(),
            undecodable,
        ),
        case(
            "malformed JSON",
            "application/json",
            br#"{"image": "#.to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "JSON with both image and images",
            "application/json",
            br#"{"image": "aGVsbG8=", "images": []}"#.to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "JSON with an unknown field",
            "application/json",
            br#"{"picture": "aGVsbG8="}"#.to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "JSON with no image",
            "application/json",
            br#"{"images": []}"#.to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "multipart without its boundary parameter",
            "multipart/form-data",
            multipart("b0undary", &[("file", &jpeg)], true),
            Error(400, "bad_request"),
        ),
        case(
            "multipart with another boundary",
            "multipart/form-data; boundary=other",
            multipart("b0undary", &[("file", &jpeg)], true),
            Error(400, "bad_request"),
        ),
        case(
            "multipart never closed",
            "multipart/form-data; boundary=b0undary",
            multipart("b0undary", &[("file", &jpeg)], false),
            Error(400, "bad_request"),
        ),
        case(
            "multipart with no file",
            "multipart/form-data; boundary=b0undary",
            b"--b0undary--\r\n".to_vec(),
            Error(400, "bad_request"),
        ),
        case(
            "multipart with a non-image",
            "multipart/form-data; boundary=b0undary",
            multipart("b0undary", &[("file", b"text")], true),
            undecodable,
        ),
    ];
    for (query, expect) in [
        "top_k=-1",
        "top_k=NaN",
        "top_k=1e30",
        "top_k=0",
        "top_k=1001",
        "top_k=99999999999999999999999",
        "alpha=0.5",
        "resolution=128",
        "alpha=NaN&resolution=128",
        "max_latency_ms=-1",
        "max_latency_ms=NaN",
        "min_top1=101",
        "timeout_ms=0",
        "timeout_ms=-5",
        "fallback=slowest",
        "model=x&alpha=0.5&resolution=128",
        "unknown=1",
    ]
    .map(|q| (q, Error(400, "bad_request")))
    .into_iter()
    .chain(
        [
            "model=no_such_model",
            "model=%FF%FE",
            "alpha=0.3&resolution=128",
        ]
        .map(|q| (q, Error(404, "unknown_model"))),
    ) {
        cases.push(Case {
            query: query.into(),
            ..case(format!("query {query}"), "image/jpeg", jpeg.clone(), expect)
        });
    }
    // Truncations at 24 points of a JPEG and of a PNG.
    for (name, file, content_type) in [("JPEG", &jpeg, "image/jpeg"), ("PNG", &png, "image/png")] {
        for i in 1..=24 {
            let cut = file.len() * i / 25;
            cases.push(case(
                format!("{name} truncated at {cut}/{}", file.len()),
                content_type,
                file[..cut].to_vec(),
                OkOr(400, "undecodable_image"),
            ));
        }
    }
    // Sixteen bytes flipped, 24 times, in each.
    for (name, file, content_type) in [("JPEG", &jpeg, "image/jpeg"), ("PNG", &png, "image/png")] {
        for seed in 0..24 {
            let mut damaged = file.clone();
            for at in positions(file.len(), 16, seed) {
                damaged[at] ^= 0x5a;
            }
            cases.push(case(
                format!("{name} with 16 corrupted bytes (seed {seed})"),
                content_type,
                damaged,
                OkOr(400, "undecodable_image"),
            ));
        }
    }
    cases
}

/// One request on a fresh connection; the status and the body.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before the whole body is sent.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    (status, response[at..].to_vec())
}

fn post_head(query: &str, content_type: &str, len: usize) -> String {
    format!(
        "POST /classify?{query} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut c = config();
    c.request_timeout = REQUEST_TIMEOUT;
    c.decode_limits.max_bytes = 1 << 20;
    let service = Service::new(pool(), c).unwrap();
    service.warm_up().await.unwrap();
    serve_http(service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_answer_in_bounded_time() {
    let (addr, _stop) = start().await;
    let cases = corpus();
    let mut slowest = Duration::ZERO;
    let mut failures = Vec::new();
    let mut outcomes = [0usize; 2];
    for c in &cases {
        let head = post_head(&c.query, &c.content_type, c.body.len());
        let started = Instant::now();
        let answer = tokio::time::timeout(BOUND, exchange(addr, &head, &c.body)).await;
        let elapsed = started.elapsed();
        slowest = slowest.max(elapsed);
        let Ok((status, body)) = answer else {
            failures.push(format!("{}: no answer within {BOUND:?}", c.name));
            continue;
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = json["error"]["code"].as_str().unwrap_or("");
        let ok = status == 200 && json["predictions"].is_array();
        let error =
            |s: u16, k: &str| status == s && code == k && json["error"]["message"].is_string();
        let passed = match c.expect {
            Expect::Ok => ok,
            Expect::Error(s, k) => error(s, k),
            Expect::OkOr(s, k) => ok || error(s, k),
        };
        outcomes[usize::from(ok)] += 1;
        if !passed {
            failures.push(format!(
                "{}: expected {:?}, got {status} {}",
                c.name,
                c.expect,
                String::from_utf8_lossy(&body)
            ));
        }
    }
    println!(
        "{} cases: {} classified, {} refused; slowest answer {slowest:?}",
        cases.len(),
        outcomes[1],
        outcomes[0]
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Healthy afterwards: ready, and a good image is classified.
    let head = "GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(addr, head, b"").await.0, 200);
    let jpeg = jpegs(1).remove(0);
    let head = post_head(&format!("model={SMALL}"), "image/jpeg", jpeg.len());
    assert_eq!(exchange(addr, &head, &jpeg).await.0, 200);
}

/// Connections that never finish their request head are closed after the server's header
/// timeout (10 s), whatever they stall on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_heads_are_closed() {
    let (addr, _stop) = start().await;
    let stall = |first: &'static [u8]| async move {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(first).await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest))
            .await
            .is_ok();
        (closed, started.elapsed())
    };
    let (silent, partial, preface, h2_head) = tokio::join!(
        stall(b""),
        stall(b"POST /classify HTTP/1.1\r\nHost: t\r\n"),
        stall(b"PRI * HTTP/2.0\r\n"),
        stall(common::serving::H2_HALF_HEAD),
    );
    for (what, (closed, took)) in [
        ("no byte at all", silent),
        ("half a request head", partial),
        ("half the HTTP/2 preface", preface),
        ("an HTTP/2 HEADERS frame without END_HEADERS", h2_head),
    ] {
        assert!(closed, "{what}: still open after {took:?}");
        assert!(
            took >= Duration::from_secs(9),
            "{what}: closed too early ({took:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_lying_bodies_are_cut_off() {
    let (addr, _stop) = start().await;
    let jpeg = jpegs(1).remove(0);

    // Slowloris: a byte every 100 ms gets 408 once the request timeout has passed.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = post_head(&format!("model={SMALL}"), "image/jpeg", jpeg.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    let dribble = async {
        for byte in &jpeg {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(3), dribble).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let took = started.elapsed();
    assert!(took < REQUEST_TIMEOUT + Duration::from_secs(4), "{took:?}");

    // A body shorter than its Content-Length, then silence: the same.
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&jpeg[..100]).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut response)).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408"));
    assert!(started.elapsed() < BOUND);

    // A declared length over the limit is refused before any byte of the body is read.
    let head = post_head(&format!("model={SMALL}"), "image/jpeg", 1 << 30);
    let started = Instant::now();
    let (status, body) = tokio::time::timeout(BOUND, exchange(addr, &head, b""))
        .await
        .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Request heads over 16 KiB get 431 with the JSON error body (in the Open Inference Protocol's
/// format under `/v2`); over the transport's 64 KiB buffer, hyper's own 431; a head of a few KiB
/// is served. A 200 KB header was answered 200 before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    use mobilenet_serve::api::head::{MAX_HEAD_BUFFER, MAX_HEAD_BYTES};
    let (addr, _stop) = start().await;
    let get = |path: &str, pad: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let (status, _) = exchange(addr, &get("/healthz", 8 * 1024), b"").await;
    assert_eq!(status, 200, "an 8 KiB head is served");

    for (path, code) in [("/healthz", "headers_too_large"), ("/v2/health/ready", "")] {
        let (status, body) = exchange(addr, &get(path, MAX_HEAD_BYTES + 10), b"").await;
        assert_eq!(status, 431, "{path}");
        let json: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        if code.is_empty() {
            // The Open Inference Protocol's error object: one message.
            assert!(json["error"].as_str().unwrap().contains("bytes"), "{json}");
        } else {
            assert_eq!(json["error"]["code"], code, "{json}");
        }
    }

    for pad in [MAX_HEAD_BUFFER + 1, 200 * 1024] {
        let (status, body) = exchange(addr, &get("/healthz", pad), b"").await;
        assert_eq!(status, 431, "a {pad}-byte header");
        // hyper's answer, before the application: the transport did not read the whole head.
        assert!(
            body.is_empty(),
            "a {pad}-byte header reached the application"
        );
    }
}

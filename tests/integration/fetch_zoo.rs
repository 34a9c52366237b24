//! `fetch-zoo` against a release served from this process: archives in Google's layout
//! (`mobilenet_v1_2018_08_02/<name>.tgz`: checkpoint junk, the `.tflite`, an info file) built
//! here from the zoo's `tflite/` files (MODELS_DIR, else ../shared/models; the tests fail, not
//! skip, when it is missing), served by a small HTTP/1.1 server on 127.0.0.1 that counts the
//! requests. No other network.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use mobilenet_serve::commands::fetch_zoo::digests::known_digest;
use mobilenet_serve::commands::fetch_zoo::download::Limits;
use mobilenet_serve::commands::fetch_zoo::grid::{ZooFile, RELEASE};
use mobilenet_serve::commands::fetch_zoo::{fetch, FetchOptions, How, Report};
use mobilenet_serve::engine::catalog;
use mobilenet_serve::engine::network::Precision;
use mobilenet_serve::engine::pool::{sha256_hex, LoadOptions, ModelPool};
use mobilenet_serve::kernels::{KernelSet, TierChoice};

/// The zoo's copies of Google's `.tflite` files.
fn tflite_dir() -> PathBuf {
    let dir = common::zoo_dir().join("tflite");
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "the zoo's tflite/ folder is missing at {} (set MODELS_DIR)",
        dir.display()
    );
    dir
}

fn zoo_bytes(name: &str) -> Vec<u8> {
    let path = tflite_dir().join(format!("{name}.tflite"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file(alpha: f32, resolution: usize, precision: Precision) -> ZooFile {
    ZooFile {
        alpha,
        resolution,
        precision,
    }
}

const FLOAT_0_25_224: (f32, usize, Precision) = (0.25, 224, Precision::Fp32);
const QUANT_0_25_128: (f32, usize, Precision) = (0.25, 128, Precision::Int8);
const QUANT_0_5_160: (f32, usize, Precision) = (0.5, 160, Precision::Int8);

fn zoo_file((alpha, resolution, precision): (f32, usize, Precision)) -> ZooFile {
    file(alpha, resolution, precision)
}

/// A release archive for `name` as Google lays them out, holding `tflite` as `./<name>.tflite`
/// between other files.
fn release_tgz(name: &str, tflite: Option<&[u8]>) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Default::default()));
    let junk: Vec<u8> = (0..50_000u32).map(|i| (i * 31 % 255) as u8).collect();
    let mut files: Vec<(String, &[u8])> = vec![(format!("./{name}.ckpt.meta"), &junk)];
    if let Some(tflite) = tflite {
        files.push((format!("./{name}.tflite"), tflite));
    }
    files.push((format!("./{name}_info.txt"), b"Model: test\n"));
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, &path, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Where the server has each archive.
fn archive_path(f: &ZooFile) -> String {
    format!("/{RELEASE}/{}.tgz", f.name())
}

/// An HTTP/1.1 server on 127.0.0.1 that answers GETs of its paths with their bytes, anything
/// else with 404, one request per connection; it counts the requests, and stops when dropped.
/// Without `length`, bodies go without `content-length`, ended by closing the connection.
struct Server {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(routes: HashMap<String, Vec<u8>>) -> Server {
        Server::start_with(routes, true)
    }

    fn start_with(routes: HashMap<String, Vec<u8>>, length: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        answer(stream, &routes, &requests, length);
                    }
                }
            })
        };
        Server {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(
    stream: TcpStream,
    routes: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<String>>,
    length: bool,
) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    // The headers, up to the blank line.
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    requests.lock().unwrap().push(path.clone());
    let mut out = &stream;
    let _ = match routes.get(&path) {
        Some(body) => out
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\n{}\
                     connection: close\r\n\r\n",
                    if length {
                        format!("content-length: {}\r\n", body.len())
                    } else {
                        String::new()
                    }
                )
                .as_bytes(),
            )
            .and_then(|()| out.write_all(body)),
        None => out.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
        ),
    };
    let _ = out.flush();
}

/// The release archives of `files`, each holding the zoo's own `.tflite`.
fn genuine(files: &[ZooFile]) -> HashMap<String, Vec<u8>> {
    files
        .iter()
        .map(|f| {
            let bytes = zoo_bytes(&f.name());
            (archive_path(f), release_tgz(&f.name(), Some(&bytes)))
        })
        .collect()
}

fn options(server: &Server, dest: &Path, files: &[ZooFile]) -> FetchOptions {
    FetchOptions {
        dest: dest.to_path_buf(),
        base_url: server.base.clone(),
        files: files.to_vec(),
        allow_unverified: false,
        limits: Limits::default(),
    }
}

/// The names of the files in `dir`, sorted (hidden ones too: a leftover `.part` must show).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn the_error(report: &Report, i: usize) -> &str {
    report.outcomes[i]
        .result
        .as_ref()
        .expect_err("this file should have failed")
}

#[test]
fn fetches_verified_files_byte_for_byte_and_lists_them() {
    let files = [
        zoo_file(FLOAT_0_25_224),
        zoo_file(QUANT_0_25_128),
        zoo_file(QUANT_0_5_160),
    ];
    let server = Server::start(genuine(&files));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("tflite");
    // An existing manifest: a foreign entry stays, a stale entry of a fetched file is replaced.
    std::fs::create_dir_all(&dest).unwrap();
    let old = serde_json::json!([
        {"name": "mine", "alpha": 1.0, "resolution": 224, "file": "mine.onnx",
         "num_classes": 1000, "label_offset": 0},
        {"name": "mobilenet_v1_0.25_224", "alpha": 0.25, "resolution": 224,
         "file": "mobilenet_v1_0.25_224.tflite", "num_classes": 1001, "label_offset": 1,
         "sha256": "0".repeat(64)},
    ]);
    std::fs::write(dest.join("manifest.json"), old.to_string()).unwrap();

    let report = fetch(&options(&server, &dest, &files)).unwrap();
    for o in &report.outcomes {
        assert_eq!(o.result.as_ref().map(|f| f.how), Ok(How::Verified), "{o:?}");
    }
    assert_eq!(report.manifest, Some(dest.join("manifest.json")));
    assert_eq!(
        listing(&dest),
        [
            "manifest.json",
            "mobilenet_v1_0.25_128_quant.tflite",
            "mobilenet_v1_0.25_224.tflite",
            "mobilenet_v1_0.5_160_quant.tflite",
        ]
    );
    for f in &files {
        let written = std::fs::read(dest.join(f.tflite_name())).unwrap();
        assert!(written == zoo_bytes(&f.name()), "{} differs", f.name());
    }

    // The catalogue reads the manifest; each entry says what the file is.
    let specs = catalog::read_manifest(&dest).unwrap().unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mine",
            "mobilenet_v1_0.25_224",
            "mobilenet_v1_0.25_128_quant",
            "mobilenet_v1_0.5_160_quant"
        ]
    );
    for (spec, f) in specs[1..].iter().zip(&files) {
        assert_eq!(spec.alpha, f.alpha);
        assert_eq!(spec.resolution, f.resolution);
        assert_eq!(spec.file, PathBuf::from(f.tflite_name()));
        assert_eq!((spec.num_classes, spec.label_offset), (1001, 1));
        assert_eq!(spec.precision, f.precision);
        assert_eq!(spec.sha256.as_deref(), known_digest(&f.tflite_name()));
    }
    let float = &specs[1];
    assert_eq!(
        (float.normalization.scale, float.normalization.offset),
        (1.0 / 127.5, -1.0)
    );
    assert_eq!(float.weights.as_deref(), Some("float"));
    assert_eq!(
        (float.published_top1, float.published_top5),
        (Some(49.8), Some(74.2))
    );
    let quant = &specs[2];
    assert_eq!(
        (quant.normalization.scale, quant.normalization.offset),
        (1.0 / 128.0, -1.0)
    );
    assert_eq!(quant.weights.as_deref(), Some("uint8-qat"));
    assert_eq!(
        (quant.published_top1, quant.published_top5),
        (Some(39.5), Some(64.4))
    );
    assert_eq!(quant.mult_adds, Some(13_570_304));
    assert_eq!(specs[3].published_top1, Some(57.7));
    // What the catalogue does not read: layout, provenance.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(raw[1]["preprocessing"]["layout"], "NHWC");
    assert_eq!(
        raw[2]["provenance"]["source"],
        format!(
            "{}/mobilenet_v1_2018_08_02/mobilenet_v1_0.25_128_quant.tgz",
            server.base
        )
    );
    assert_eq!(
        raw[2]["provenance"]["origin"],
        "Google mobilenet_v1_2018_08_02 release"
    );

    // And the directory serves: the files import, named with ImageNet's classes though it has
    // no names file (the binary's own).
    let opts = LoadOptions {
        variants: None,
        resolution: None,
        kernels: KernelSet::select(TierChoice::Auto).unwrap(),
    };
    let pool = ModelPool::load_available(&dest, &opts).unwrap();
    assert_eq!(
        pool.names(),
        [
            "mobilenet_v1_0.25_224",
            "mobilenet_v1_0.25_128_quant",
            "mobilenet_v1_0.5_160_quant"
        ]
    );
    assert_eq!(
        pool.unavailable().len(),
        1,
        "the foreign entry's file is absent"
    );
    let v = pool.get("mobilenet_v1_0.5_160_quant").unwrap();
    assert_eq!(pool.label(v, 1), "tench");
}

#[test]
fn a_second_run_downloads_only_what_is_missing_or_damaged() {
    let files = [zoo_file(FLOAT_0_25_224), zoo_file(QUANT_0_25_128)];
    let server = Server::start(genuine(&files));
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(&server, tmp.path(), &files);
    let first = fetch(&opts).unwrap();
    assert_eq!(first.count(How::Verified), 2);
    assert_eq!(server.requests().len(), 2);
    let manifest = std::fs::read(tmp.path().join("manifest.json")).unwrap();

    let second = fetch(&opts).unwrap();
    assert_eq!(second.count(How::Present), 2, "{second:?}");
    assert_eq!(server.requests().len(), 2, "no request for files present");
    assert_eq!(
        std::fs::read(tmp.path().join("manifest.json")).unwrap(),
        manifest
    );

    // A damaged copy is fetched again, and only it.
    let damaged = tmp.path().join(files[1].tflite_name());
    std::fs::write(&damaged, b"not the file").unwrap();
    let third = fetch(&opts).unwrap();
    assert_eq!(third.count(How::Present), 1);
    assert_eq!(third.count(How::Verified), 1);
    assert_eq!(
        server.requests().last().map(String::as_str),
        Some(archive_path(&files[1]).as_str())
    );
    assert_eq!(server.requests().len(), 3);
    assert!(std::fs::read(&damaged).unwrap() == zoo_bytes(&files[1].name()));
}

#[test]
fn a_wrong_digest_is_refused_and_nothing_is_kept() {
    let f = zoo_file(QUANT_0_25_128);
    let mut bytes = zoo_bytes(&f.name());
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let server = Server::start(HashMap::from([(
        archive_path(&f),
        release_tgz(&f.name(), Some(&bytes)),
    )]));
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(&server, tmp.path(), &[f]);
    // Even when unverified files are allowed: a known digest must match.
    opts.allow_unverified = true;
    let report = fetch(&opts).unwrap();
    let error = the_error(&report, 0);
    assert!(
        error.contains(&format!(
            "has sha256 {}, expected {}: not kept",
            sha256_hex(&bytes),
            known_digest(&f.tflite_name()).unwrap()
        )),
        "{error}"
    );
    assert_eq!(report.manifest, None);
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn a_truncated_archive_is_refused_and_nothing_is_kept() {
    let f = zoo_file(QUANT_0_5_160);
    let whole = release_tgz(&f.name(), Some(&zoo_bytes(&f.name())));
    let cut = whole[..whole.len() / 2].to_vec();
    let server = Server::start(HashMap::from([(archive_path(&f), cut)]));
    let tmp = tempfile::tempdir().unwrap();
    let report = fetch(&options(&server, tmp.path(), &[f])).unwrap();
    let error = the_error(&report, 0);
    let url = format!("{}{}", server.base, archive_path(&f));
    assert!(
        error.starts_with(&format!("{url}: truncated or corrupt archive")),
        "{error}"
    );
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn an_archive_without_its_tflite_or_too_large_is_refused() {
    let f = zoo_file(FLOAT_0_25_224);
    let server = Server::start(HashMap::from([(
        archive_path(&f),
        release_tgz(&f.name(), None),
    )]));
    let tmp = tempfile::tempdir().unwrap();
    let report = fetch(&options(&server, tmp.path(), &[f])).unwrap();
    let error = the_error(&report, 0);
    assert!(
        error.contains("the archive holds no mobilenet_v1_0.25_224.tflite (it has"),
        "{error}"
    );
    assert!(error.contains("mobilenet_v1_0.25_224.ckpt.meta"), "{error}");
    assert!(listing(tmp.path()).is_empty());

    // Over the size limit: refused from the announced length, or while reading a body that
    // announces none.
    let big = zoo_file(QUANT_0_25_128);
    for length in [true, false] {
        let server = Server::start_with(genuine(&[big]), length);
        let mut opts = options(&server, tmp.path(), &[big]);
        opts.limits.max_bytes = 100_000;
        let report = fetch(&opts).unwrap();
        let error = the_error(&report, 0);
        assert!(error.contains("more than --max-bytes 100000"), "{error}");
        assert!(listing(tmp.path()).is_empty());
    }
}

#[test]
fn a_missing_archive_is_reported_with_its_url_and_the_others_still_come() {
    let served = zoo_file(FLOAT_0_25_224);
    let missing = zoo_file(QUANT_0_25_128);
    let server = Server::start(genuine(&[served]));
    let tmp = tempfile::tempdir().unwrap();
    let report = fetch(&options(&server, tmp.path(), &[missing, served])).unwrap();
    let url = format!("{}{}", server.base, archive_path(&missing));
    assert_eq!(the_error(&report, 0), format!("{url}: HTTP 404 Not Found"));
    assert_eq!(
        report.outcomes[1].result.as_ref().map(|f| f.how),
        Ok(How::Verified)
    );
    assert_eq!(report.failed(), 1);

    // The binary: each file reported, exit 1 at the end. A cell's name takes both its files.
    let twin = file(0.25, 224, Precision::Int8);
    let server = Server::start(genuine(&[served, twin]));
    let url = format!("{}{}", server.base, archive_path(&missing));
    let dest = tmp.path().join("cli");
    let out = Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
        .args(["fetch-zoo", "--from", &server.base, "--dest"])
        .arg(&dest)
        .args([
            "--variants",
            "mobilenet_v1_0.25_128_quant,mobilenet_v1_0.25_224",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: mobilenet_v1_0.25_128_quant: {url}: HTTP 404 Not Found"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("mobilenet_v1_0.25_224: fetched"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mobilenet_v1_0.25_224_quant: fetched"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fetch-zoo: 2 fetched, 0 already present, 0 unverified, 1 failed"),
        "{stdout}"
    );
    assert_eq!(
        listing(&dest),
        [
            "manifest.json",
            "mobilenet_v1_0.25_224.tflite",
            "mobilenet_v1_0.25_224_quant.tflite"
        ]
    );
}

#[test]
fn a_file_without_a_known_digest_needs_allow_unverified() {
    let f = file(1.0, 224, Precision::Fp32);
    assert_eq!(known_digest(&f.tflite_name()), None);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 17 % 249) as u8).collect();
    let server = Server::start(HashMap::from([(
        archive_path(&f),
        release_tgz(&f.name(), Some(&bytes)),
    )]));
    let tmp = tempfile::tempdir().unwrap();

    let report = fetch(&options(&server, tmp.path(), &[f])).unwrap();
    let error = the_error(&report, 0);
    assert!(error.contains("refused"), "{error}");
    assert!(error.contains("--allow-unverified"), "{error}");
    assert!(server.requests().is_empty(), "refused before downloading");
    assert!(listing(tmp.path()).is_empty());

    // The binary, with the flag: a warning, exit 0, the digest computed here recorded.
    let out = Command::new(env!("CARGO_BIN_EXE_mobilenet-serve"))
        .args(["fetch-zoo", "--from", &server.base, "--dest"])
        .arg(tmp.path())
        .args([
            "--variants",
            "mobilenet_v1_1.0_224",
            "--precision",
            "fp32",
            "--allow-unverified",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let digest = sha256_hex(&bytes);
    assert!(
        stderr.contains("warning: mobilenet_v1_1.0_224: no known sha256")
            && stderr.contains(&digest),
        "{stderr}"
    );
    assert!(stdout.contains("1 unverified, 0 failed"), "{stdout}");
    assert!(std::fs::read(tmp.path().join(f.tflite_name())).unwrap() == bytes);
    let specs = catalog::read_manifest(tmp.path()).unwrap().unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "mobilenet_v1_1.0_224");
    assert_eq!(specs[0].sha256.as_deref(), Some(digest.as_str()));
    assert_eq!(specs[0].published_top1, Some(70.9));
}

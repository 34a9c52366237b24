//! The `fetch-zoo` command: Google's MobileNet v1 `.tflite` files, straight from the
//! `mobilenet_v1_2018_08_02` release archives, each checked against the digest the repository
//! knows (`models/tflite/SHA256SUMS`) and listed in the destination's `manifest.json`.
//!
//! For each file selected: skip it when the destination already holds it with the known digest;
//! else download `<base>/mobilenet_v1_2018_08_02/<name>.tgz`, stream it through gzip and tar, copy
//! only the `.tflite` into a temporary file beside its final place, and rename it into place
//! only once its digest is the known one. A file the repository has no digest for is refused,
//! unless `--allow-unverified`: then it is kept with a warning, and the manifest records the
//! digest computed here. A failing file does not stop the others; each is reported.
//!
//! Not done: resuming a partial download (an interrupted file starts again from the start of
//! its archive next time), and keeping anything of the archive besides the `.tflite`.

pub mod archive;
pub mod digests;
pub mod download;
pub mod grid;
pub mod manifest;
pub mod published;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use self::archive::ArchiveError;
use self::download::{Client, Limits};
use self::grid::ZooFile;
use crate::commands::cli::FetchZooArgs;
use crate::commands::{manifest_file, progress};
use crate::engine::catalog;
use crate::engine::pool::sha256_hex;
use crate::error::{Error, Result};

/// What to fetch, from where, to where.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The directory the `.tflite` files and `manifest.json` go to (made if needed).
    pub dest: PathBuf,
    /// The URL the release folder is under ([`grid::DEFAULT_BASE_URL`] for Google's).
    pub base_url: String,
    /// The files to fetch.
    pub files: Vec<ZooFile>,
    /// Keep files the repository has no digest for (with a warning) instead of refusing them.
    pub allow_unverified: bool,
    /// Timeouts and size limit of each archive.
    pub limits: Limits,
}

impl FetchOptions {
    /// The options `args` give.
    pub fn from_args(args: &FetchZooArgs) -> Result<FetchOptions> {
        // Without names: what can be verified, so that the plain command succeeds.
        let files = grid::select(args.variants.as_deref(), &args.precision, |f| {
            digests::known_digest(&f.tflite_name()).is_some()
        })
        .map_err(Error::Config)?;
        Ok(FetchOptions {
            dest: args.dest.clone(),
            base_url: args.from.clone(),
            files,
            allow_unverified: args.allow_unverified,
            limits: Limits {
                connect: Duration::from_secs(args.connect_timeout_s),
                total: Duration::from_secs(args.timeout_s),
                max_bytes: args.max_bytes,
            },
        })
    }
}

/// How one file was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// It was already in the destination with the known digest: nothing was downloaded.
    Present,
    /// Downloaded, and its digest is the known one.
    Verified,
    /// Downloaded with `--allow-unverified`: no digest was known to check it against.
    Unverified,
}

/// A file now in the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// How it got there.
    pub how: How,
    /// Its sha256 (lowercase hex), as the manifest records it.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What became of one selected file.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The variant's name (`mobilenet_v1_0.25_224_quant`).
    pub name: String,
    /// Where the file is, or would be.
    pub path: PathBuf,
    /// The file, or why there is none (a message that names the variant's URL or file).
    pub result: std::result::Result<Fetched, String>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// One per selected file, in selection order.
    pub outcomes: Vec<Outcome>,
    /// The manifest written, unless no file was obtained.
    pub manifest: Option<PathBuf>,
}

impl Report {
    /// Files that failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_err()).count()
    }

    /// Files obtained in the way `how`.
    pub fn count(&self, how: How) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result.as_ref().is_ok_and(|f| f.how == how))
            .count()
    }
}

/// Runs `fetch-zoo` as `args` say; exit code 1 when any file failed.
pub fn command(args: &FetchZooArgs) -> Result<ExitCode> {
    let report = fetch(&FetchOptions::from_args(args)?)?;
    println!(
        "fetch-zoo: {} fetched, {} already present, {} unverified, {} failed{}",
        report.count(How::Verified),
        report.count(How::Present),
        report.count(How::Unverified),
        report.failed(),
        report
            .manifest
            .as_ref()
            .map(|m| format!("; manifest {}", m.display()))
            .unwrap_or_default()
    );
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fetches every file of `opts`, printing each one's outcome as it is known, and merges the
/// entries of the files obtained into `dest/manifest.json`. Fails only when the destination or
/// its manifest is unusable; a file's failure is in the report.
pub fn fetch(opts: &FetchOptions) -> Result<Report> {
    std::fs::create_dir_all(&opts.dest).map_err(|e| Error::io(&opts.dest, e))?;
    // Read before any download: a malformed manifest fails the run at once, not at its end.
    let old = manifest_file::read(&opts.dest)?;
    // The catalogue checks the manifest's digests against this file: they must agree.
    let listed = catalog::read_checksums(&opts.dest)?;
    let client = Client::new(opts.limits);
    let mut outcomes = Vec::with_capacity(opts.files.len());
    let mut entries = Vec::new();
    for file in &opts.files {
        let url = file.url(&opts.base_url);
        let path = opts.dest.join(file.tflite_name());
        let result = fetch_file(opts, &client, file, &url, &listed);
        let name = file.name();
        match &result {
            Ok(f) => {
                entries.push(manifest::entry(file, &f.sha256, &url));
                match f.how {
                    How::Present => println!("{name}: already present ({})", path.display()),
                    How::Verified => println!(
                        "{name}: fetched {} ({} bytes, sha256 as in {})",
                        path.display(),
                        f.bytes,
                        digests::SOURCE
                    ),
                    How::Unverified => eprintln!(
                        "warning: {name}: no known sha256 for {}: kept UNVERIFIED \
                         (--allow-unverified); its manifest entry records sha256 {}",
                        path.display(),
                        f.sha256
                    ),
                }
            }
            Err(why) => eprintln!("error: {name}: {why}"),
        }
        outcomes.push(Outcome { name, path, result });
    }
    let manifest = if entries.is_empty() {
        None
    } else {
        manifest_file::write(&opts.dest, &manifest_file::merge(old, entries))?;
        Some(opts.dest.join(catalog::MANIFEST))
    };
    Ok(Report { outcomes, manifest })
}

/// Puts one file in the destination, or says why not (naming its URL or path).
fn fetch_file(
    opts: &FetchOptions,
    client: &Client,
    file: &ZooFile,
    url: &str,
    listed: &HashMap<PathBuf, String>,
) -> std::result::Result<Fetched, String> {
    let name = file.tflite_name();
    let known = digests::known_digest(&name);
    let listed = listed.get(Path::new(&name)).map(String::as_str);
    if let (Some(known), Some(listed)) = (known, listed) {
        if known != listed {
            return Err(format!(
                "{} gives {name} the sha256 {listed}, but the repository's {} gives {known}: \
                 correct or remove that line",
                opts.dest.join(catalog::CHECKSUMS).display(),
                digests::SOURCE
            ));
        }
    }
    let path = opts.dest.join(&name);
    if let Some(known) = known {
        if let Ok(bytes) = std::fs::read(&path) {
            if sha256_hex(&bytes) == known {
                return Ok(Fetched {
                    how: How::Present,
                    sha256: known.to_string(),
                    bytes: bytes.len() as u64,
                });
            }
        }
    } else if !opts.allow_unverified {
        return Err(format!(
            "{url}: refused: the repository knows no sha256 for {name} (see {}); pass \
             --allow-unverified to take it unchecked",
            digests::SOURCE
        ));
    }
    let download = client.get(url)?;
    let bar = progress::bar(
        download.length.unwrap_or(0),
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    );
    bar.set_message(file.name());
    let mut body = download.body.with_progress((*bar).clone());
    let mut partial = Partial::create(&opts.dest, &name)?;
    // With a known digest, reading past the file is of no use; without one, gzip's CRC over the
    // whole archive is the only check there is.
    let extracted = archive::extract_file(&mut body, &name, &mut partial.file, known.is_none())
        .map_err(|e| match (body.failure(), e) {
            (Some(failure), _) => failure.to_string(),
            (None, ArchiveError::Missing { seen }) => format!(
                "{url}: the archive holds no {name} (it has {}{})",
                seen.join(", "),
                if seen.len() >= 8 { ", ..." } else { "" }
            ),
            (None, ArchiveError::Corrupt(why)) => {
                format!("{url}: truncated or corrupt archive: {why}")
            }
            (None, ArchiveError::Write(e)) => format!("{}: {e}", partial.path.display()),
        })?;
    let expected = known.or(listed);
    if let Some(expected) = expected.filter(|&e| e != extracted.sha256) {
        return Err(format!(
            "{url}: {name} has sha256 {}, expected {expected}: not kept",
            extracted.sha256
        ));
    }
    partial.keep_as(&path)?;
    Ok(Fetched {
        how: if known.is_some() {
            How::Verified
        } else {
            How::Unverified
        },
        sha256: extracted.sha256,
        bytes: extracted.bytes,
    })
}

/// A file being written beside its final place: removed when dropped, unless kept.
struct Partial {
    path: PathBuf,
    file: File,
    kept: bool,
}

impl Partial {
    /// A new temporary file for `name` in `dir`; hidden, and told apart from another process's.
    fn create(dir: &Path, name: &str) -> std::result::Result<Partial, String> {
        let path = dir.join(format!(".{name}.{}.part", std::process::id()));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Partial {
            path,
            file,
            kept: false,
        })
    }

    /// Moves the file to `to` (on disk first, so that a crash leaves the old file or the whole
    /// new one).
    fn keep_as(mut self, to: &Path) -> std::result::Result<(), String> {
        self.file
            .sync_all()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        std::fs::rename(&self.path, to).map_err(|e| format!("{}: {e}", to.display()))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            // Best effort: a failed download must not leave its bytes in the destination.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

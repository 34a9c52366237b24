//! The models directory as it changes under a running server: what it describes now, one
//! variant loaded at a time (sharing the networks already in memory), and a cheap fingerprint
//! that tells whether anything changed since the last look.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::catalog::{self, VariantSpec};
use super::network::Network;
use super::pool::{
    check_consistent, expected_digest, import_guarded, read_checked, read_specs, LoadOptions,
    ModelSource, Unavailable, Variant,
};
use crate::error::{Error, Result};

/// Every variant a models directory describes now, loaded or not.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// The variants it describes, in catalogue order.
    pub specs: Vec<VariantSpec>,
    /// Model files of a manifest-less directory whose graph could not be read, and why.
    pub unavailable: Vec<Unavailable>,
}

impl Catalogue {
    /// Reads `dir`'s manifests, or derives a spec from each model file when it has none (which
    /// imports every file: a manifest makes rescans cheap).
    pub fn scan(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Catalog(format!(
                "models directory `{}` does not exist",
                dir.display()
            )));
        }
        let (specs, unavailable) = read_specs(dir, opts, false)?;
        Ok(Catalogue { specs, unavailable })
    }

    /// The variant called `name`.
    pub fn spec(&self, name: &str) -> Option<&VariantSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Whether `name` is a variant of the catalogue (loadable or not).
    pub fn knows(&self, name: &str) -> bool {
        self.spec(name).is_some() || self.unavailable.iter().any(|u| u.name == name)
    }
}

/// Loads the variant `spec` of `dir`: reads its file, checks its digest against the manifest or
/// `SHA256SUMS`, and imports it, unless one of `in_memory` already holds a network of the same
/// bytes, which it then shares. Also returns the file's [`FileStamp`], taken before the read, so
/// that a write during the read shows as a change next time.
pub fn load_variant(
    dir: &Path,
    spec: &VariantSpec,
    opts: &LoadOptions,
    in_memory: &[&Variant],
) -> Result<(Variant, Option<FileStamp>)> {
    let path = dir.join(&spec.file);
    let stamp = FileStamp::of(&path);
    let checksums = catalog::read_all_checksums(dir)?;
    let expected = expected_digest(spec, &checksums)?;
    let (bytes, sha256) = read_checked(&path, expected.as_deref())?;
    let model = match in_memory
        .iter()
        .find(|v| v.source == ModelSource::File && v.sha256 == sha256)
    {
        Some(v) => v.model.clone(),
        None => Arc::new(Network::new(import_guarded(&path, &bytes)?, opts.kernels)),
    };
    check_consistent(spec, &model)?;
    let variant = Variant {
        spec: spec.clone(),
        model,
        sha256,
        verified: expected.is_some(),
        source: ModelSource::File,
    };
    Ok((variant, stamp))
}

/// What `stat` says of a file: a new size, time or inode (a replacement by rename) is a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` (following symbolic links); `None` when it cannot be
    /// read.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// Every file of a models directory and its stamp, sorted (see [`fingerprint`]).
pub type Fingerprint = Vec<(PathBuf, Option<FileStamp>)>;

/// Every file of `dir` and of its direct subfolders (where sub-manifests live), with its stamp,
/// sorted: equal fingerprints mean that a rescan would find what the last one found. Costs a
/// `stat` per file, not a read.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if depth == 0 {
                    folders.push((path, 1));
                }
            } else {
                let stamp = FileStamp::of(&path);
                out.push((path, stamp));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_a_changed_added_or_replaced_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"one").unwrap();
        std::fs::create_dir(dir.path().join("int8")).unwrap();
        std::fs::write(dir.path().join("int8/manifest.json"), b"{}").unwrap();
        let first = fingerprint(dir.path());
        assert_eq!(first.len(), 2);
        assert_eq!(fingerprint(dir.path()), first);
        // Same size, new contents: the time moves (set explicitly, coarse clocks exist).
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.onnx"))
            .unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        drop(file);
        let touched = fingerprint(dir.path());
        assert_ne!(touched, first);
        std::fs::write(dir.path().join("int8/b.onnx"), b"two").unwrap();
        let added = fingerprint(dir.path());
        assert_eq!(added.len(), 3);
        // An atomic replacement by rename keeps size and may keep the time; the inode moves.
        std::fs::write(dir.path().join("tmp"), b"one").unwrap();
        let tmp = std::fs::File::options()
            .write(true)
            .open(dir.path().join("tmp"))
            .unwrap();
        tmp.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        drop(tmp);
        std::fs::rename(dir.path().join("tmp"), dir.path().join("a.onnx")).unwrap();
        assert_ne!(fingerprint(dir.path()), added);
    }
}

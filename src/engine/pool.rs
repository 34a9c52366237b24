//! The variants of a models directory, loaded into memory. Each distinct ONNX file is imported
//! once, however many resolutions it serves.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::catalog::{self, VariantSpec};
use super::embedded;
use super::import::{self, Imported};
use super::network::Network;
use crate::error::{Error, Result};
use crate::kernels::KernelSet;

/// How to load a models directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Only these variant names (all when `None`).
    pub variants: Option<Vec<String>>,
    /// Input size for manifest-less models with a symbolic input.
    pub resolution: Option<usize>,
    /// The kernels the models run with.
    pub kernels: KernelSet,
}

/// One servable variant: its description and its (possibly shared) model.
#[derive(Debug, Clone)]
pub struct Variant {
    /// What it is.
    pub spec: VariantSpec,
    /// The network; variants of the same file share it.
    pub model: Arc<Network>,
    /// The sha256 of its ONNX file, as loaded.
    pub sha256: String,
    /// Whether that digest was checked against an expected one (manifest or `SHA256SUMS`).
    pub verified: bool,
    /// Where its model came from.
    pub source: ModelSource,
}

/// Where a variant's model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// A file of the models directory.
    File,
    /// The default model compiled into the binary.
    Embedded,
}

/// A variant of the catalogue that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Unavailable {
    /// Variant name.
    pub name: String,
    /// Its ONNX file, relative to the models directory.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// What went wrong.
    pub error: String,
}

impl Variant {
    /// Elements of one preprocessed input image (`resolution^2 x channels`).
    pub fn input_len(&self) -> usize {
        self.spec.resolution * self.spec.resolution * self.model.in_c()
    }
}

/// All loaded variants plus the class names. Cloning is cheap: the models are shared.
#[derive(Debug, Clone)]
pub struct ModelPool {
    dir: PathBuf,
    variants: Vec<Variant>,
    unavailable: Vec<Unavailable>,
    class_names: Vec<String>,
    options: LoadOptions,
}

/// A loaded ONNX file.
struct Loaded {
    model: Arc<Network>,
    sha256: String,
    verified: bool,
}

impl ModelPool {
    /// Loads the variants of `dir` (from its manifest, or derived from each ONNX file); any
    /// variant that cannot be loaded is an error.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_inner(dir, opts, true)
    }

    /// Loads what can be loaded of `dir`: a missing, corrupt or tampered file (its sha256
    /// differs from the expected one) fails only its variants, listed in
    /// [`ModelPool::unavailable`]. Fails when no variant loads.
    pub fn load_available(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Self::load_inner(dir, opts, false)
    }

    fn load_inner(dir: &Path, opts: &LoadOptions, strict: bool) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Catalog(format!(
                "models directory `{}` does not exist (run models/link-zoo.sh, or pass --models DIR)",
                dir.display()
            )));
        }
        let (specs, mut unavailable) = read_specs(dir, opts, strict)?;
        // A wanted variant whose file already failed stays listed as unavailable.
        let wanted: Option<Vec<String>> = opts.variants.as_ref().map(|w| {
            w.iter()
                .filter(|name| !unavailable.iter().any(|u| &u.name == *name))
                .cloned()
                .collect()
        });
        let specs = select(specs, wanted.as_deref())?;
        if let Some(wanted) = &opts.variants {
            unavailable.retain(|u| wanted.contains(&u.name));
        }
        if specs.is_empty() && unavailable.is_empty() {
            return Err(Error::Catalog(format!(
                "no variants in `{}`: it needs ONNX files (run models/link-zoo.sh)",
                dir.display()
            )));
        }
        let checksums = catalog::read_all_checksums(dir)?;
        let mut files: HashMap<PathBuf, std::result::Result<Arc<Loaded>, String>> = HashMap::new();
        let mut variants = Vec::with_capacity(specs.len());
        for spec in specs {
            let loaded = match files.get(&spec.file) {
                Some(l) => l.clone(),
                None => {
                    let expected = expected_digest(&spec, &checksums);
                    let l = expected
                        .and_then(|e| load_file(dir, &spec.file, e.as_deref(), opts))
                        .map(Arc::new);
                    let l = match l {
                        Err(e) if strict => return Err(e),
                        l => l.map_err(|e| e.to_string()),
                    };
                    files.insert(spec.file.clone(), l.clone());
                    l
                }
            };
            let checked = loaded.and_then(|l| {
                check_consistent(&spec, &l.model)
                    .map(|()| l)
                    .map_err(|e| e.to_string())
            });
            match checked {
                Ok(l) => variants.push(Variant {
                    spec,
                    model: l.model.clone(),
                    sha256: l.sha256.clone(),
                    verified: l.verified,
                    source: ModelSource::File,
                }),
                Err(error) if strict => return Err(Error::Catalog(error)),
                Err(error) => unavailable.push(Unavailable {
                    name: spec.name,
                    file: spec.file,
                    error,
                }),
            }
        }
        if variants.is_empty() {
            let why: Vec<String> = unavailable
                .iter()
                .map(|u| format!("{}: {}", u.name, u.error))
                .collect();
            return Err(Error::Catalog(format!(
                "no variant of `{}` could be loaded: {}",
                dir.display(),
                why.join("; ")
            )));
        }
        Ok(ModelPool {
            dir: dir.to_path_buf(),
            variants,
            unavailable,
            // Without a names file, the ImageNet names the binary carries for its embedded
            // model: every MobileNet of the grid has the same 1000 classes.
            class_names: catalog::class_names(dir)?.unwrap_or_else(embedded::class_names),
            options: opts.clone(),
        })
    }

    /// The default model compiled into the binary ([`embedded`]); `dir` is where the pool looks
    /// for other files, such as measured accuracies. `opts.variants` may name it only.
    pub fn embedded(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let spec = embedded::spec();
        let [spec] = &select(vec![spec], opts.variants.as_deref())?[..] else {
            return Err(Error::Catalog(
                "the embedded model is one variant: name it once".into(),
            ));
        };
        let sha256 = sha256_hex(embedded::MODEL);
        if sha256 != embedded::SHA256 {
            return Err(Error::Catalog(format!(
                "the embedded model's sha256 is {sha256}, expected {}: the binary was built from \
                 another file than models/embedded/{}",
                embedded::SHA256,
                embedded::FILE
            )));
        }
        let imported = import_guarded(Path::new(embedded::FILE), embedded::MODEL)?;
        let model = Arc::new(Network::new(imported, opts.kernels));
        check_consistent(spec, &model)?;
        Ok(ModelPool {
            dir: dir.to_path_buf(),
            variants: vec![Variant {
                spec: spec.clone(),
                model,
                sha256,
                verified: true,
                source: ModelSource::Embedded,
            }],
            unavailable: Vec::new(),
            class_names: embedded::class_names(),
            options: opts.clone(),
        })
    }

    /// The variants of the catalogue that could not be loaded (only with
    /// [`ModelPool::load_available`]).
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// The directory the pool was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// No variant: what an `explicit` model control mode starts from when told to load none.
    pub fn empty(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        Ok(ModelPool {
            dir: dir.to_path_buf(),
            variants: Vec::new(),
            unavailable: Vec::new(),
            class_names: catalog::class_names(dir)?.unwrap_or_else(embedded::class_names),
            options: opts.clone(),
        })
    }

    /// How it was loaded (what later loads of the live repository use too).
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// The ImageNet class names (index = class).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Every loaded variant, in catalogue order.
    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// The variant called `name`.
    pub fn get(&self, name: &str) -> Result<&Variant> {
        self.variants
            .iter()
            .find(|v| v.spec.name == name)
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// Names of every loaded variant.
    pub fn names(&self) -> Vec<String> {
        self.variants.iter().map(|v| v.spec.name.clone()).collect()
    }

    /// The ImageNet class index of output `index` of `variant`, or `None` for "background".
    pub fn class_of(&self, variant: &Variant, index: usize) -> Option<usize> {
        index.checked_sub(variant.spec.label_offset)
    }

    /// The human label of output `index` of `variant`.
    pub fn label(&self, variant: &Variant, index: usize) -> String {
        match self.class_of(variant, index) {
            None => "background".into(),
            Some(c) => self
                .class_names
                .get(c)
                .cloned()
                .unwrap_or_else(|| format!("class_{c}")),
        }
    }
}

/// Every variant `dir` describes: its manifest's (else derived from each model file's graph)
/// and its sub-directories' manifests'. Unless `strict`, a manifest-less file that cannot be
/// read or imported is listed as unavailable under its file stem.
pub(super) fn read_specs(
    dir: &Path,
    opts: &LoadOptions,
    strict: bool,
) -> Result<(Vec<VariantSpec>, Vec<Unavailable>)> {
    let (mut specs, unavailable) = match catalog::read_manifest(dir)? {
        Some(specs) => (specs, Vec::new()),
        None => derive_specs(dir, opts, strict)?,
    };
    for more in catalog::read_sub_manifests(dir)? {
        if let Some(twice) = specs.iter().find(|s| s.name == more.name) {
            return Err(Error::Catalog(format!(
                "two variants are called `{}`: {} and {}",
                more.name,
                twice.file.display(),
                more.file.display()
            )));
        }
        specs.push(more);
    }
    Ok((specs, unavailable))
}

/// The specs of a manifest-less directory, from each model file's graph. Unless `strict`, a file
/// that cannot be read or imported is listed as unavailable under its file stem.
fn derive_specs(
    dir: &Path,
    opts: &LoadOptions,
    strict: bool,
) -> Result<(Vec<VariantSpec>, Vec<Unavailable>)> {
    let mut specs: Vec<VariantSpec> = Vec::new();
    let mut unavailable = Vec::new();
    for file in catalog::model_files(dir)? {
        let derived = std::fs::read(&file)
            .map_err(|e| Error::io(&file, e))
            .and_then(|bytes| import_guarded(&file, &bytes))
            .map(|imported| Network::new(imported, opts.kernels))
            .and_then(|network| catalog::derive_spec(&file, &network, opts.resolution));
        let mut spec = match derived {
            Ok(spec) => spec,
            Err(e) if strict => return Err(e),
            Err(e) => {
                let stem = file.file_stem().unwrap_or_default();
                unavailable.push(Unavailable {
                    name: stem.to_string_lossy().into_owned(),
                    file: file.file_name().map(PathBuf::from).unwrap_or_default(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        if specs.iter().any(|s| s.name == spec.name) {
            // Two files describe the same cell: keep both, told apart by their file names.
            spec.name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(spec.name);
        }
        specs.push(spec);
    }
    Ok((specs, unavailable))
}

/// The digest `spec`'s file must have: from the manifest, else from `SHA256SUMS`; the two must
/// agree when both give one.
pub(super) fn expected_digest(
    spec: &VariantSpec,
    checksums: &HashMap<PathBuf, String>,
) -> Result<Option<String>> {
    match (&spec.sha256, checksums.get(&spec.file)) {
        (Some(a), Some(b)) if a != b => Err(Error::Catalog(format!(
            "{}: the manifest's sha256 {a} and {}'s {b} disagree",
            spec.file.display(),
            catalog::CHECKSUMS
        ))),
        (Some(a), _) => Ok(Some(a.clone())),
        (None, b) => Ok(b.cloned()),
    }
}

/// Reads, checks and imports one ONNX file.
fn load_file(
    dir: &Path,
    file: &Path,
    expected: Option<&str>,
    opts: &LoadOptions,
) -> Result<Loaded> {
    let path = dir.join(file);
    let (bytes, sha256) = read_checked(&path, expected)?;
    let imported = import_guarded(&path, &bytes)?;
    Ok(Loaded {
        model: Arc::new(Network::new(imported, opts.kernels)),
        sha256,
        verified: expected.is_some(),
    })
}

/// The bytes of the model file at `path` and their sha256, which must be `expected` if given.
pub(super) fn read_checked(path: &Path, expected: Option<&str>) -> Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(expected) = expected {
        if sha256 != expected {
            return Err(Error::Catalog(format!(
                "{}: sha256 is {sha256}, expected {expected}: the file is corrupt, truncated or \
                 not the one the catalogue describes",
                path.display()
            )));
        }
    }
    Ok((bytes, sha256))
}

/// Imports `bytes`; a panic in the importer (a bug that a malformed file found) fails this file
/// only, not the process.
pub(super) fn import_guarded(path: &Path, bytes: &[u8]) -> Result<Imported> {
    catch_unwind(AssertUnwindSafe(|| import::import_any(bytes)))
        .unwrap_or_else(|_| Err(Error::MalformedModel("the importer panicked".into())))
        .map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))
}

/// The sha256 of `bytes` in lowercase hex, as manifests and `SHA256SUMS` give it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn select(specs: Vec<VariantSpec>, wanted: Option<&[String]>) -> Result<Vec<VariantSpec>> {
    let Some(wanted) = wanted else {
        return Ok(specs);
    };
    let mut chosen = Vec::with_capacity(wanted.len());
    for name in wanted {
        match specs.iter().find(|s| &s.name == name) {
            Some(s) => chosen.push(s.clone()),
            None => {
                return Err(Error::UnknownModel {
                    name: name.clone(),
                    known: specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(chosen)
}

/// The manifest must agree with the graph it describes.
pub(super) fn check_consistent(spec: &VariantSpec, network: &Network) -> Result<()> {
    let bad = |why: String| Err(Error::Catalog(format!("{}: {why}", spec.name)));
    if network.precision() != spec.precision {
        return bad(format!(
            "the manifest says {}, the graph is {}",
            spec.precision,
            network.precision()
        ));
    }
    if network.classes() != spec.num_classes {
        return bad(format!(
            "the manifest says {} classes, the graph outputs {}",
            spec.num_classes,
            network.classes()
        ));
    }
    for fixed in network.fixed_size().into_iter().flatten() {
        if fixed != spec.resolution {
            return bad(format!(
                "the graph is fixed at {fixed} pixels, the variant wants {}",
                spec.resolution
            ));
        }
    }
    if let Some(stem) = network.stem_width() {
        if (stem as f32 - 32.0 * spec.alpha).abs() > 0.5 {
            return bad(format!(
                "alpha {} but the stem has {stem} channels",
                spec.alpha
            ));
        }
    }
    network.mult_adds(spec.resolution, spec.resolution)?;
    Ok(())
}

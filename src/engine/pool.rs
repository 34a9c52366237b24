//! The variants of a models directory, loaded into memory. Each distinct ONNX file is imported
//! once, however many resolutions it serves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::catalog::{self, VariantSpec};
use super::import;
use super::model::Model;
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
    pub model: Arc<Model>,
}

impl Variant {
    /// Elements of one preprocessed input image (`resolution^2 x channels`).
    pub fn input_len(&self) -> usize {
        self.spec.resolution * self.spec.resolution * self.model.plan().in_c
    }
}

/// All loaded variants plus the class names.
#[derive(Debug)]
pub struct ModelPool {
    dir: PathBuf,
    variants: Vec<Variant>,
    class_names: Vec<String>,
}

impl ModelPool {
    /// Loads the variants of `dir` (from its manifest, or derived from each ONNX file).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Catalog(format!(
                "models directory `{}` does not exist (run models/link-zoo.sh, or pass --models DIR)",
                dir.display()
            )));
        }
        let specs = match catalog::read_manifest(dir)? {
            Some(specs) => specs,
            None => derive_specs(dir, opts.resolution)?,
        };
        let specs = select(specs, opts.variants.as_deref())?;
        if specs.is_empty() {
            return Err(Error::Catalog(format!(
                "no variants in `{}`: it needs ONNX files (run models/link-zoo.sh)",
                dir.display()
            )));
        }
        let mut models: HashMap<PathBuf, Arc<Model>> = HashMap::new();
        let mut variants = Vec::with_capacity(specs.len());
        for spec in specs {
            let model = match models.get(&spec.file) {
                Some(m) => m.clone(),
                None => {
                    let path = dir.join(&spec.file);
                    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                    let plan = import::import_bytes(&bytes)
                        .map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))?;
                    let m = Arc::new(Model::new(plan, opts.kernels));
                    models.insert(spec.file.clone(), m.clone());
                    m
                }
            };
            check_consistent(&spec, &model)?;
            variants.push(Variant { spec, model });
        }
        Ok(ModelPool {
            dir: dir.to_path_buf(),
            variants,
            class_names: catalog::class_names(dir)?,
        })
    }

    /// The directory the pool was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
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

fn derive_specs(dir: &Path, resolution: Option<usize>) -> Result<Vec<VariantSpec>> {
    let mut specs: Vec<VariantSpec> = Vec::new();
    for file in catalog::onnx_files(dir)? {
        let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let plan = import::import_bytes(&bytes)
            .map_err(|e| Error::Catalog(format!("{}: {e}", file.display())))?;
        let mut spec = catalog::derive_spec(&file, &plan, resolution)?;
        if specs.iter().any(|s| s.name == spec.name) {
            // Two files describe the same cell: keep both, told apart by their file names.
            spec.name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(spec.name);
        }
        specs.push(spec);
    }
    Ok(specs)
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
fn check_consistent(spec: &VariantSpec, model: &Model) -> Result<()> {
    let plan = model.plan();
    let bad = |why: String| Err(Error::Catalog(format!("{}: {why}", spec.name)));
    if plan.classes != spec.num_classes {
        return bad(format!(
            "the manifest says {} classes, the graph outputs {}",
            spec.num_classes, plan.classes
        ));
    }
    for fixed in [plan.height, plan.width].into_iter().flatten() {
        if fixed != spec.resolution {
            return bad(format!(
                "the graph is fixed at {fixed} pixels, the variant wants {}",
                spec.resolution
            ));
        }
    }
    if let Some(stem) = plan.stem_width() {
        if (stem as f32 - 32.0 * spec.alpha).abs() > 0.5 {
            return bad(format!(
                "alpha {} but the stem has {stem} channels",
                spec.alpha
            ));
        }
    }
    plan.mult_adds(spec.resolution, spec.resolution)?;
    Ok(())
}

//! The files of Google's MobileNet v1 release of 2018-08-02: one archive per alpha x rho cell
//! and number format, where each archive is named after the variant it holds.

use crate::engine::catalog::{self, INT8_SUFFIX};
use crate::engine::network::Precision;

/// Where the release lives by default: the bucket behind TF-slim's links
/// (`http://download.tensorflow.org/models/...` in `research/slim/nets/mobilenet_v1.md`), over
/// https.
pub const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com/download.tensorflow.org/models";
/// The release's folder under the base URL.
pub const RELEASE: &str = "mobilenet_v1_2018_08_02";
/// The width multipliers published, widest first.
pub const ALPHAS: [f32; 4] = [1.0, 0.75, 0.5, 0.25];
/// The input sizes published, largest first.
pub const RESOLUTIONS: [usize; 4] = [224, 192, 160, 128];

/// One `.tflite` file of the release: float, or uint8 quantization-aware-trained (`_quant`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZooFile {
    /// Width multiplier.
    pub alpha: f32,
    /// Input height and width.
    pub resolution: usize,
    /// `Fp32` for the float file, `Int8` for the `_quant` one.
    pub precision: Precision,
}

impl ZooFile {
    /// All 32 files, cell by cell (widest and largest first), the float file before the quant one.
    pub fn all() -> Vec<ZooFile> {
        let mut files = Vec::with_capacity(32);
        for alpha in ALPHAS {
            for resolution in RESOLUTIONS {
                for precision in Precision::ALL {
                    files.push(ZooFile {
                        alpha,
                        resolution,
                        precision,
                    });
                }
            }
        }
        files
    }

    /// The variant's name, which is also the archive's and the `.tflite`'s stem:
    /// `mobilenet_v1_0.25_224`, `mobilenet_v1_0.25_224_quant`.
    pub fn name(&self) -> String {
        let cell = self.cell_name();
        match self.precision {
            Precision::Fp32 => cell,
            Precision::Int8 => format!("{cell}{INT8_SUFFIX}"),
        }
    }

    /// The name of its alpha x rho cell, shared by the float and the quant file.
    pub fn cell_name(&self) -> String {
        catalog::variant_name(self.alpha, self.resolution)
    }

    /// The `.tflite` file the archive holds and that is written to the destination.
    pub fn tflite_name(&self) -> String {
        format!("{}.tflite", self.name())
    }

    /// The archive's URL under `base` (a trailing `/` on `base` is allowed).
    pub fn url(&self, base: &str) -> String {
        format!(
            "{}/{RELEASE}/{}.tgz",
            base.trim_end_matches('/'),
            self.name()
        )
    }
}

/// The files that `names` and `precisions` select: a cell name (`mobilenet_v1_0.5_160`) takes
/// both of its files, a `_quant` name only that one, `all` every file; then only the
/// `precisions` asked for are kept. Without names, the files for which `default` holds. Fails on
/// an unknown name, or when nothing is left.
pub fn select(
    names: Option<&[String]>,
    precisions: &[Precision],
    default: impl Fn(&ZooFile) -> bool,
) -> Result<Vec<ZooFile>, String> {
    let all = ZooFile::all();
    let chosen: Vec<ZooFile> = match names {
        None => all.into_iter().filter(|f| default(f)).collect(),
        Some(names) => {
            if let Some(unknown) = names.iter().find(|n| {
                n.as_str() != "all" && !all.iter().any(|f| &f.name() == *n || &f.cell_name() == *n)
            }) {
                return Err(format!(
                    "unknown variant `{unknown}`: use `all`, mobilenet_v1_<alpha>_<rho> or \
                     mobilenet_v1_<alpha>_<rho>{INT8_SUFFIX} with alpha in 1.0, 0.75, 0.5, 0.25 \
                     and rho in 224, 192, 160, 128"
                ));
            }
            all.into_iter()
                .filter(|f| {
                    names
                        .iter()
                        .any(|n| n == "all" || *n == f.name() || *n == f.cell_name())
                })
                .collect()
        }
    };
    let chosen: Vec<ZooFile> = chosen
        .into_iter()
        .filter(|f| precisions.contains(&f.precision))
        .collect();
    if chosen.is_empty() {
        return Err("these --variants and --precision select no file".into());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls_follow_the_release() {
        let f = ZooFile {
            alpha: 1.0,
            resolution: 224,
            precision: Precision::Int8,
        };
        assert_eq!(f.name(), "mobilenet_v1_1.0_224_quant");
        assert_eq!(f.tflite_name(), "mobilenet_v1_1.0_224_quant.tflite");
        assert_eq!(
            f.url("http://h/models/"),
            "http://h/models/mobilenet_v1_2018_08_02/mobilenet_v1_1.0_224_quant.tgz"
        );
        assert_eq!(ZooFile::all().len(), 32);
    }

    #[test]
    fn selection_by_cell_file_and_precision() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pick = |v: &[&str], p: &[Precision]| {
            select(Some(&names(v)), p, |_| false)
                .map(|fs| fs.iter().map(ZooFile::name).collect::<Vec<_>>())
        };
        assert_eq!(
            pick(&["mobilenet_v1_0.5_160"], &Precision::ALL).unwrap(),
            ["mobilenet_v1_0.5_160", "mobilenet_v1_0.5_160_quant"]
        );
        assert_eq!(
            pick(&["mobilenet_v1_0.5_160_quant"], &Precision::ALL).unwrap(),
            ["mobilenet_v1_0.5_160_quant"]
        );
        assert_eq!(
            pick(&["mobilenet_v1_0.5_160"], &[Precision::Fp32]).unwrap(),
            ["mobilenet_v1_0.5_160"]
        );
        assert_eq!(pick(&["all"], &[Precision::Int8]).unwrap().len(), 16);
        assert!(pick(&["mobilenet_v1_0.5_160_quant"], &[Precision::Fp32]).is_err());
        assert!(pick(&["mobilenet_v1_0.4_160"], &Precision::ALL)
            .unwrap_err()
            .contains("mobilenet_v1_0.4_160"));
        let default = select(None, &Precision::ALL, |f| f.resolution == 128).unwrap();
        assert_eq!(default.len(), 8);
    }
}

//! Labelled image folders: `labels.tsv` (file TAB ImageNet class index; `#` comments; extra
//! columns ignored) beside the images.

use std::path::{Path, PathBuf};

use crate::engine::catalog::files_with_extensions;
use crate::error::{Error, Result};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImage {
    /// Path of the image file.
    pub path: PathBuf,
    /// ImageNet class index, 0..999.
    pub class: usize,
}

/// Reads `dir/labels.tsv`, in file order.
pub fn read_labels(dir: &Path) -> Result<Vec<LabeledImage>> {
    let path = dir.join("labels.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_labels(dir, &text).map_err(|m| Error::Catalog(format!("{}: {m}", path.display())))
}

fn parse_labels(dir: &Path, text: &str) -> Result<Vec<LabeledImage>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split('\t');
        let file = cols.next().unwrap_or_default();
        let class = cols
            .next()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&c| c < 1000)
            .ok_or_else(|| format!("line {}: expected `file<TAB>class index 0..999`", n + 1))?;
        out.push(LabeledImage {
            path: dir.join(file),
            class,
        });
    }
    Ok(out)
}

/// Image files directly inside `dir` (by extension), sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with_extensions(dir, &["jpg", "jpeg", "png", "webp", "bmp", "gif"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_and_extra_columns() {
        let t = "# header\na.jpg\t5\tn0001\tname\n\nb.jpg\t999\n";
        let l = parse_labels(Path::new("d"), t).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0],
            LabeledImage {
                path: "d/a.jpg".into(),
                class: 5
            }
        );
        assert_eq!(l[1].class, 999);
    }

    #[test]
    fn rejects_bad_class() {
        assert!(parse_labels(Path::new("d"), "a.jpg\t1000\n").is_err());
        assert!(parse_labels(Path::new("d"), "a.jpg\n").is_err());
    }
}

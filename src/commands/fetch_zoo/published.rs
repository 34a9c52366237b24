//! What Google published about each file of the release, for its manifest entry.
//!
//! Accuracy: the table of TF-slim's `research/slim/nets/mobilenet_v1.md` (tensorflow/models,
//! the version that links the `mobilenet_v1_2018_08_02` archives, e.g. commit 10cf1c0a):
//! ImageNet top-1 / top-5 (%) of each float model, and of each `_quant` model measured on the
//! uint8 TFLite file itself (its August 2, 2018 revision). The same figures are in the shared
//! zoo's `manifest.json` and `int8/manifest.json`.
//!
//! Cost: multiply-adds per image and parameters of the 1001-class graph with batch norm folded,
//! counted layer by layer as the shared zoo's manifests give them (TF-slim rounds them: 569
//! million MACs and 4.24 million parameters for 1.0_224). Float and quant files share them.

use crate::engine::network::Precision;

/// One alpha x rho cell of the table.
#[derive(Debug, Clone, Copy)]
struct Cell {
    alpha: f32,
    resolution: usize,
    mult_adds: u64,
    params: u64,
    /// Float top-1, top-5.
    float: (f64, f64),
    /// `_quant` top-1, top-5.
    quant: (f64, f64),
}

const fn cell(
    alpha: f32,
    resolution: usize,
    mult_adds: u64,
    params: u64,
    float: (f64, f64),
    quant: (f64, f64),
) -> Cell {
    Cell {
        alpha,
        resolution,
        mult_adds,
        params,
        float,
        quant,
    }
}

#[rustfmt::skip]
const TABLE: [Cell; 16] = [
    cell(1.0, 224, 568_741_376, 4_222_057, (70.9, 89.9), (70.1, 88.9)),
    cell(1.0, 192, 418_122_752, 4_222_057, (70.0, 89.2), (69.2, 88.3)),
    cell(1.0, 160, 290_676_224, 4_222_057, (68.0, 87.7), (67.2, 86.7)),
    cell(1.0, 128, 186_401_792, 4_222_057, (65.2, 85.8), (63.4, 84.2)),
    cell(0.75, 224, 325_401_216, 2_578_121, (68.4, 88.2), (66.8, 87.0)),
    cell(0.75, 192, 239_274_240, 2_578_121, (67.2, 87.3), (66.1, 86.4)),
    cell(0.75, 160, 166_397_568, 2_578_121, (65.3, 86.0), (62.3, 83.8)),
    cell(0.75, 128, 106_771_200, 2_578_121, (62.1, 83.9), (55.8, 78.8)),
    cell(0.5, 224, 149_497_600, 1_326_633, (63.3, 84.9), (60.7, 83.2)),
    cell(0.5, 192, 109_970_944, 1_326_633, (61.7, 83.6), (60.0, 82.2)),
    cell(0.5, 160, 76_525_312, 1_326_633, (59.1, 81.9), (57.7, 80.4)),
    cell(0.5, 128, 49_160_704, 1_326_633, (56.3, 79.4), (54.5, 77.7)),
    cell(0.25, 224, 41_030_528, 467_593, (49.8, 74.2), (48.0, 72.8)),
    cell(0.25, 192, 30_212_864, 467_593, (47.7, 72.3), (46.0, 71.2)),
    cell(0.25, 160, 21_059_456, 467_593, (45.5, 70.3), (43.4, 68.5)),
    cell(0.25, 128, 13_570_304, 467_593, (41.5, 66.3), (39.5, 64.4)),
];

/// Google's figures for one file (f64: the decimals as published go into JSON unchanged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    /// ImageNet top-1 (%).
    pub top1: f64,
    /// ImageNet top-5 (%).
    pub top5: f64,
    /// Multiply-adds per image.
    pub mult_adds: u64,
    /// Learned parameters.
    pub params: u64,
}

/// The figures of the file of cell `alpha` x `resolution` in `precision`; `None` off the grid.
pub fn published(alpha: f32, resolution: usize, precision: Precision) -> Option<Published> {
    let c = TABLE
        .iter()
        .find(|c| c.alpha == alpha && c.resolution == resolution)?;
    let (top1, top5) = match precision {
        Precision::Fp32 => c.float,
        Precision::Int8 => c.quant,
    };
    Some(Published {
        top1,
        top5,
        mult_adds: c.mult_adds,
        params: c.params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::fetch_zoo::grid::ZooFile;

    #[test]
    fn every_file_has_figures() {
        for f in ZooFile::all() {
            let p = published(f.alpha, f.resolution, f.precision).unwrap();
            assert!(p.top1 > 30.0 && p.top1 < p.top5, "{}", f.name());
        }
        let q = published(0.75, 128, Precision::Int8).unwrap();
        assert_eq!((q.top1, q.top5), (55.8, 78.8));
        assert_eq!(published(0.3, 224, Precision::Fp32), None);
    }
}

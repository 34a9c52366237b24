//! Calibration: the range of every activation of a float model over a set of images, from
//! which post-training quantization chooses each tensor's uint8 scale and zero point.

use super::histogram::Histogram;
use crate::engine::model::{Model, Nhwc};
use crate::engine::quant::plan::QuantParams;
use crate::engine::workspace::Workspace;
use crate::error::{Error, Result};

/// How the values seen become a tensor's range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeMethod {
    /// From the smallest to the largest value seen.
    MinMax,
    /// Each end at this percentile of the values on its side of zero (e.g. 99.99): rare
    /// outliers are clipped so that the common values get finer steps.
    Percentile(f64),
}

/// A real interval that contains zero (so that zero, the padding value, is exact).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// The lowest value, at most 0.
    pub lo: f32,
    /// The highest value, at least 0.
    pub hi: f32,
}

impl Range {
    /// The interval spanning `lo..=hi` and zero.
    pub fn new(lo: f32, hi: f32) -> Range {
        Range {
            lo: lo.min(0.0),
            hi: hi.max(0.0),
        }
    }

    /// Asymmetric uint8 parameters covering the range: 255 steps from `lo` to `hi`, the zero
    /// point rounded to the nearest step (half to even), as ONNX Runtime's quantizer chooses
    /// them. An empty range (a tensor that is always 0) gets scale 1.
    pub fn uint8(&self) -> QuantParams {
        let span = f64::from(self.hi) - f64::from(self.lo);
        if span <= 0.0 {
            return QuantParams {
                scale: 1.0,
                zero: 0,
            };
        }
        let scale = (span / 255.0) as f32;
        let zero = (-f64::from(self.lo) / f64::from(scale))
            .round_ties_even()
            .clamp(0.0, 255.0) as u8;
        QuantParams { scale, zero }
    }
}

/// The values seen in one tensor.
#[derive(Debug, Clone, Default)]
struct TensorStats {
    min: f32,
    max: f32,
    /// Magnitudes of the positive and of the negative values (percentile method only).
    positive: Option<Histogram>,
    negative: Option<Histogram>,
}

impl TensorStats {
    fn new(method: RangeMethod) -> Self {
        let histogram = matches!(method, RangeMethod::Percentile(_)).then(Histogram::default);
        TensorStats {
            min: 0.0,
            max: 0.0,
            positive: histogram.clone(),
            negative: histogram,
        }
    }

    /// Counts `values`; false when one is not finite.
    fn add(&mut self, values: &[f32]) -> bool {
        for &v in values {
            if !v.is_finite() {
                return false;
            }
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            let side = if v < 0.0 {
                &mut self.negative
            } else {
                &mut self.positive
            };
            if let Some(h) = side {
                h.add(v.abs());
            }
        }
        true
    }

    fn range(&self, method: RangeMethod) -> Range {
        let at =
            |h: &Option<Histogram>, percent: f64| h.as_ref().map_or(0.0, |h| h.percentile(percent));
        match method {
            RangeMethod::MinMax => Range::new(self.min, self.max),
            RangeMethod::Percentile(p) => Range::new(-at(&self.negative, p), at(&self.positive, p)),
        }
    }
}

/// Runs a float model over calibration batches and keeps the statistics of every layer's
/// output.
#[derive(Debug)]
pub struct Calibrator<'m> {
    model: &'m Model,
    method: RangeMethod,
    layers: Vec<TensorStats>,
    images: usize,
    ws: Workspace,
    out: Vec<f32>,
}

impl<'m> Calibrator<'m> {
    /// A calibrator of `model`'s layers by `method`, with nothing seen yet.
    pub fn new(model: &'m Model, method: RangeMethod) -> Self {
        if let RangeMethod::Percentile(p) = method {
            debug_assert!(p > 0.0 && p <= 100.0, "percentile {p}");
        }
        Calibrator {
            model,
            method,
            layers: vec![TensorStats::new(method); model.plan().layers.len()],
            images: 0,
            ws: Workspace::new(),
            out: Vec::new(),
        }
    }

    /// Runs the model on `images` (preprocessed as the model expects) and counts every layer's
    /// output values.
    pub fn observe(&mut self, images: Nhwc<'_>) -> Result<()> {
        let mut bad_layer = None;
        let layers = &mut self.layers;
        let mut count = |i: usize, values: &[f32]| {
            if !layers[i].add(values) && bad_layer.is_none() {
                bad_layer = Some(i);
            }
        };
        self.model
            .run_observed(&mut self.ws, images, &mut self.out, &mut count)?;
        if let Some(i) = bad_layer {
            return Err(Error::BadInput(format!(
                "calibration: layer {i} of the float model produced a value that is not finite"
            )));
        }
        self.images += images.batch;
        Ok(())
    }

    /// Images observed so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Each layer's output range, in layer order; an error before any image was observed.
    pub fn ranges(&self) -> Result<Vec<Range>> {
        if self.images == 0 {
            return Err(Error::BadInput(
                "calibration needs at least one image".into(),
            ));
        }
        Ok(self.layers.iter().map(|s| s.range(self.method)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_parameters_cover_the_range_with_an_exact_zero() {
        let q = Range::new(0.0, 6.0).uint8();
        assert_eq!(q.zero, 0);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-9);
        // -lo / scale is 127.5 less the f32 rounding of 2/255: the zero point is 127.
        let q = Range::new(-1.0, 1.0).uint8();
        assert_eq!(q.zero, 127);
        let q = Range::new(-10.0, 30.0).uint8();
        assert_eq!(q.dequantize(q.zero), 0.0);
        assert!(q.dequantize(0) <= -10.0 + q.scale && q.dequantize(255) >= 30.0 - q.scale);
        // A range that does not reach zero is widened to it.
        assert_eq!(Range::new(2.0, 3.0), Range { lo: 0.0, hi: 3.0 });
        assert_eq!(Range::new(0.0, 0.0).uint8().scale, 1.0);
    }

    #[test]
    fn percentile_clips_outliers_that_min_max_keeps() {
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 100) as f32 / 100.0).collect();
        values.push(50.0);
        values.push(-0.5);
        let mut minmax = TensorStats::new(RangeMethod::MinMax);
        let mut pct = TensorStats::new(RangeMethod::Percentile(99.9));
        assert!(minmax.add(&values) && pct.add(&values));
        assert_eq!(
            minmax.range(RangeMethod::MinMax),
            Range { lo: -0.5, hi: 50.0 }
        );
        let r = pct.range(RangeMethod::Percentile(99.9));
        assert!(r.hi < 1.1, "{r:?}");
        // One negative value: its side's percentile is that value.
        assert_eq!(r.lo, -0.5);
        assert!(!minmax.add(&[f32::NAN]));
    }
}

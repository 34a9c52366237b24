//! The shapes every kernel takes: a convolution's geometry, a GEMM's sizes, and the activation
//! fused into the stores.

/// An activation fused into a kernel's store: `min(max(x, lo), hi)`.
///
/// `Clamp::NONE` is the identity, `Clamp::RELU` is ReLU and `Clamp::RELU6` is ReLU6.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    /// Lower bound (may be `-inf`).
    pub lo: f32,
    /// Upper bound (may be `+inf`).
    pub hi: f32,
}

impl Clamp {
    /// No activation.
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };
    /// `max(x, 0)`.
    pub const RELU: Clamp = Clamp {
        lo: 0.0,
        hi: f32::INFINITY,
    };
    /// `min(max(x, 0), 6)`.
    pub const RELU6: Clamp = Clamp { lo: 0.0, hi: 6.0 };

    /// True when this clamp leaves every value unchanged.
    pub fn is_identity(&self) -> bool {
        self.lo == f32::NEG_INFINITY && self.hi == f32::INFINITY
    }

    /// Applies the clamp to one value.
    #[inline(always)]
    pub fn apply(&self, x: f32) -> f32 {
        x.max(self.lo).min(self.hi)
    }
}

/// Geometry of one convolution over an NHWC batch, with padding already resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input rows.
    pub in_h: usize,
    /// Input columns.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Output rows.
    pub out_h: usize,
    /// Output columns.
    pub out_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel rows.
    pub kh: usize,
    /// Kernel columns.
    pub kw: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Zero rows added above the input (rows below follow from the output size).
    pub pad_top: usize,
    /// Zero columns added left of the input.
    pub pad_left: usize,
}

impl ConvGeometry {
    /// Number of input values the kernel reads.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }

    /// Number of output values the kernel writes.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.out_c
    }

    /// Output values of one output row (all its columns and channels).
    pub fn output_row_len(&self) -> usize {
        self.out_w * self.out_c
    }

    /// The same convolution restricted to output rows `rows` of one image: its geometry (batch 1)
    /// and the input rows of that image it reads. Any kernel run on those input rows with this
    /// geometry writes exactly those output rows, so a layer can be split into row bands that run
    /// on different threads.
    pub fn row_band(&self, rows: std::ops::Range<usize>) -> (ConvGeometry, std::ops::Range<usize>) {
        assert!(
            rows.start < rows.end && rows.end <= self.out_h,
            "row band {rows:?} of {} output rows",
            self.out_h
        );
        // Input rows touched: from the first row's top tap to the last row's bottom tap, less the
        // padding. Rows below the band's inputs count as padding in the band, which is right: no
        // tap of the band reaches them unless they are the real padding.
        let top = rows.start * self.stride_h;
        let first = top.saturating_sub(self.pad_top).min(self.in_h);
        let last = ((rows.end - 1) * self.stride_h + self.kh)
            .saturating_sub(self.pad_top)
            .clamp(first, self.in_h);
        let band = ConvGeometry {
            batch: 1,
            in_h: last - first,
            out_h: rows.len(),
            pad_top: self.pad_top.saturating_sub(top),
            ..*self
        };
        (band, first..last)
    }
}

/// Sizes of a GEMM: `a` is `m x k`, `b` is `k x n`, `c` is `m x n`, all row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of `a` and `c` (pixels times batch for a pointwise conv).
    pub m: usize,
    /// Columns of `a`, rows of `b` (input channels).
    pub k: usize,
    /// Columns of `b` and `c` (output channels).
    pub n: usize,
}

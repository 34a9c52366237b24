//! What an integer kernel reads besides its input: a layer's weights, bias, zero point and
//! requantization.

use super::requant::Requant;

/// The largest depthwise kernel (in taps) the integer kernels run: 8x8. MobileNets use 3x3; a
/// bound lets the fast tiers keep their tap table on the stack.
pub const MAX_DEPTHWISE_TAPS: usize = 64;

/// One quantized layer's parameters as the kernels read them.
#[derive(Debug, Clone, Copy)]
pub struct QuantLayer<'a> {
    /// Weights minus their zero point, in the layout of the tier that runs the layer (the
    /// scalar tier's is the float kernels': `[kh][kw][in_c][out_c]`, `[kh][kw][c]` or
    /// `[in_c][out_c]`).
    pub weights: &'a [i16],
    /// One bias per output channel, in accumulator units (input scale x weight scale).
    pub bias: &'a [i32],
    /// The input activations' zero point: the quantized value of a real 0, which the padding
    /// holds too.
    pub input_zero: u8,
    /// From accumulator to output activation.
    pub requant: &'a Requant,
}

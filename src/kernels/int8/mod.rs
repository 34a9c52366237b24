//! Integer kernels for 8-bit quantized models: uint8 activations, weights already centred on
//! their zero point, int32 accumulators, and one requantization back to uint8 per output.
//!
//! [`generic`] is the scalar reference, the specification of every faster tier; [`requant`]
//! defines the arithmetic that turns an accumulator into an activation, and how far it may be
//! from the real-number definition.

pub mod generic;
pub mod requant;

pub use requant::Requant;

/// One quantized layer's parameters as the kernels read them.
#[derive(Debug, Clone, Copy)]
pub struct QuantLayer<'a> {
    /// Weights minus their zero point, in the float kernels' layout for the layer's kind
    /// (`[kh][kw][in_c][out_c]`, `[kh][kw][c]` or `[in_c][out_c]`).
    pub weights: &'a [i16],
    /// One bias per output channel, in accumulator units (input scale x weight scale).
    pub bias: &'a [i32],
    /// The input activations' zero point: the quantized value of a real 0, which the padding
    /// holds too.
    pub input_zero: u8,
    /// From accumulator to output activation.
    pub requant: &'a Requant,
}

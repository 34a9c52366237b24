//! What a gRPC request may cost once decoded, checked on its wire bytes before prost builds it.
//!
//! tonic bounds the encoded size of a message (`max_decoding_message_size`), but protobuf
//! expands as it decodes: an empty `bytes_contents` element is 2 bytes on the wire and a
//! 24-byte `Vec` in memory, an empty `InferInputTensor` 2 bytes and about 300 decoded, a map
//! entry 2 bytes and a hash-table slot. Within the 20 MiB an inference may carry, that is
//! 0.25 to 3 GB. The inference service's generated code decodes with [`BudgetCodec`]
//! (proto/build.rs), which asks the message type's [`WireBudget`] first:
//! - an inference request may take at most twice its wire size, plus [`SLACK_BYTES`], once
//!   decoded: its tensors' data (raw bytes, FP32, encoded images) decode about one to one, so
//!   only floods of tiny elements, tensors or parameters are refused;
//! - any other request carries names and a few parameters: at most [`SMALL_REQUEST_BYTES`].

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// The largest request other than an inference, on the wire.
pub const SMALL_REQUEST_BYTES: usize = 64 << 10;
/// What an inference request may take decoded beyond twice its wire size: its fixed parts,
/// names, shape and parameters.
pub const SLACK_BYTES: usize = 64 << 10;

/// A check of a message's encoded bytes before it is decoded.
pub trait WireBudget {
    /// Refuses `wire` when decoding it would cost more than the message type allows.
    fn check(wire: &[u8]) -> Result<(), Status>;
}

/// Refuses a request over [`SMALL_REQUEST_BYTES`].
pub fn small_request(wire: &[u8]) -> Result<(), Status> {
    if wire.len() > SMALL_REQUEST_BYTES {
        return Err(Status::invalid_argument(format!(
            "the request is {} bytes; this call takes at most {SMALL_REQUEST_BYTES}",
            wire.len()
        )));
    }
    Ok(())
}

/// The in-memory sizes of the decoded types of `inference.ModelInferRequest`, given by the
/// module that owns the generated code.
#[derive(Debug, Clone, Copy)]
pub struct InferSizes {
    /// `ModelInferRequest`.
    pub request: usize,
    /// `InferInputTensor`, with its inline `InferTensorContents`.
    pub input: usize,
    /// `InferRequestedOutputTensor`.
    pub output: usize,
    /// One entry of a parameters map: key, value and the hash table's control byte.
    pub parameter: usize,
    /// One element of a `repeated bytes` field (a `Vec<u8>`).
    pub bytes: usize,
}

/// Refuses an inference request whose decoded form would take more than twice its wire size
/// plus [`SLACK_BYTES`], or whose wire format is broken.
pub fn infer_request(wire: &[u8], sizes: &InferSizes) -> Result<(), Status> {
    let cost = request_cost(wire, sizes)
        .map_err(|e| Status::invalid_argument(format!("malformed ModelInferRequest: {e}")))?;
    let budget = wire.len().saturating_mul(2).saturating_add(SLACK_BYTES);
    if cost > budget {
        return Err(Status::invalid_argument(format!(
            "the request would take {cost} bytes once decoded, over the {budget} allowed for its \
             {} bytes on the wire: too many tensors, parameters or tiny elements",
            wire.len()
        )));
    }
    Ok(())
}

/// A tonic codec: prost's encoder, and prost's decoding after the message's [`WireBudget`].
#[derive(Debug)]
pub struct BudgetCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for BudgetCodec<T, U> {
    fn default() -> Self {
        BudgetCodec(PhantomData)
    }
}

impl<T, U> Codec for BudgetCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireBudget + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BudgetDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BudgetDecoder(PhantomData)
    }
}

/// Decodes `U` once its [`WireBudget`] accepts the bytes.
#[derive(Debug)]
pub struct BudgetDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default + WireBudget> Decoder for BudgetDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let decoded = if buf.chunk().len() == buf.remaining() {
            U::check(buf.chunk())?;
            U::decode(buf)
        } else {
            // tonic hands over one contiguous buffer; should that change, check a copy.
            let whole = buf.copy_to_bytes(buf.remaining());
            U::check(&whole)?;
            U::decode(whole)
        };
        decoded
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
    }
}

/// A broken wire format.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// The bytes end inside a field.
    #[error("truncated field")]
    Truncated,
    /// A varint of more than 10 bytes.
    #[error("varint too long")]
    LongVarint,
    /// Field number 0, or a group (wire types 3 and 4, which proto3 does not produce).
    #[error("unsupported field key {0}")]
    Key(u64),
}

/// A field's value on the wire.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    /// Wire type 0.
    Varint,
    /// Wire types 1 and 5.
    Fixed,
    /// Wire type 2: bytes, a string, a message or a packed array.
    Len(&'a [u8]),
}

fn varint(rest: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, tail) = rest.split_first().ok_or(Malformed::Truncated)?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed::LongVarint)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if rest.len() < n {
        return Err(Malformed::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

/// The sum of `cost_of(number, value)` over every field of the message `wire`.
fn field_costs<'a>(
    mut wire: &'a [u8],
    mut cost_of: impl FnMut(u64, Value<'a>) -> Result<usize, Malformed>,
) -> Result<usize, Malformed> {
    let mut cost = 0usize;
    while !wire.is_empty() {
        let key = varint(&mut wire)?;
        let number = key >> 3;
        if number == 0 {
            return Err(Malformed::Key(key));
        }
        let value = match key & 7 {
            0 => varint(&mut wire).map(|_| Value::Varint)?,
            1 => take(&mut wire, 8).map(|_| Value::Fixed)?,
            2 => {
                let len = usize::try_from(varint(&mut wire)?).map_err(|_| Malformed::Truncated)?;
                Value::Len(take(&mut wire, len)?)
            }
            5 => take(&mut wire, 4).map(|_| Value::Fixed)?,
            _ => return Err(Malformed::Key(key)),
        };
        cost = cost.saturating_add(cost_of(number, value)?);
    }
    Ok(cost)
}

/// How a repeated scalar is encoded.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Varint,
    Fixed32,
    Fixed64,
}

/// The elements of a repeated scalar field's occurrence: packed (wire type 2) or one.
fn elements(value: Value<'_>, scalar: Scalar) -> usize {
    match (value, scalar) {
        (Value::Len(packed), Scalar::Varint) => packed.iter().filter(|b| **b < 0x80).count(),
        (Value::Len(packed), Scalar::Fixed32) => packed.len() / 4,
        (Value::Len(packed), Scalar::Fixed64) => packed.len() / 8,
        _ => 1,
    }
}

/// The bytes a `Value::Len` field takes as a string or unknown field (prost skips unknown
/// fields; counting them anyway keeps this an upper bound).
fn len_of(value: Value<'_>) -> usize {
    match value {
        Value::Len(b) => b.len(),
        _ => 0,
    }
}

/// An upper estimate of the memory `inference.ModelInferRequest` takes decoded from `wire`.
fn request_cost(wire: &[u8], sizes: &InferSizes) -> Result<usize, Malformed> {
    let fields = field_costs(wire, |number, value| {
        Ok(match (number, value) {
            (4, Value::Len(entry)) => sizes.parameter + entry.len(),
            (5, Value::Len(input)) => sizes.input.saturating_add(input_cost(input, sizes)?),
            (6, Value::Len(output)) => sizes.output.saturating_add(output_cost(output, sizes)?),
            (7, Value::Len(raw)) => sizes.bytes + raw.len(),
            (_, other) => len_of(other),
        })
    })?;
    Ok(sizes.request.saturating_add(fields))
}

/// `InferInputTensor`: name, datatype, shape, parameters, contents.
fn input_cost(wire: &[u8], sizes: &InferSizes) -> Result<usize, Malformed> {
    field_costs(wire, |number, value| {
        Ok(match (number, value) {
            (3, shape) => 8 * elements(shape, Scalar::Varint),
            (4, Value::Len(entry)) => sizes.parameter + entry.len(),
            (5, Value::Len(contents)) => contents_cost(contents, sizes)?,
            (_, other) => len_of(other),
        })
    })
}

/// `InferRequestedOutputTensor`: name, parameters.
fn output_cost(wire: &[u8], sizes: &InferSizes) -> Result<usize, Malformed> {
    field_costs(wire, |number, value| {
        Ok(match (number, value) {
            (2, Value::Len(entry)) => sizes.parameter + entry.len(),
            (_, other) => len_of(other),
        })
    })
}

/// `InferTensorContents`: one repeated field per datatype, in its Rust element size.
fn contents_cost(wire: &[u8], sizes: &InferSizes) -> Result<usize, Malformed> {
    field_costs(wire, |number, value| {
        Ok(match number {
            1 => elements(value, Scalar::Varint),
            2 | 4 => 4 * elements(value, Scalar::Varint),
            3 | 5 => 8 * elements(value, Scalar::Varint),
            6 => 4 * elements(value, Scalar::Fixed32),
            7 => 8 * elements(value, Scalar::Fixed64),
            8 => sizes.bytes + len_of(value),
            _ => len_of(value),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: InferSizes = InferSizes {
        request: 200,
        input: 300,
        output: 100,
        parameter: 80,
        bytes: 24,
    };

    fn field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
        prost::encoding::encode_key(
            number as u32,
            prost::encoding::WireType::LengthDelimited,
            out,
        );
        prost::encoding::encode_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn counts_packed_and_unpacked_scalars() {
        assert_eq!(elements(Value::Len(&[1, 0x80, 1, 2]), Scalar::Varint), 3);
        assert_eq!(elements(Value::Len(&[0; 12]), Scalar::Fixed32), 3);
        assert_eq!(elements(Value::Len(&[0; 16]), Scalar::Fixed64), 2);
        assert_eq!(elements(Value::Varint, Scalar::Varint), 1);
    }

    #[test]
    fn a_flood_of_empty_images_is_refused_and_real_images_pass() {
        let mut contents = Vec::new();
        for _ in 0..50_000 {
            field(&mut contents, 8, b"");
        }
        let mut input = Vec::new();
        field(&mut input, 5, &contents);
        let mut flood = Vec::new();
        field(&mut flood, 5, &input);
        let refused = infer_request(&flood, &SIZES).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("once decoded"), "{refused:?}");

        let mut contents = Vec::new();
        for _ in 0..64 {
            field(&mut contents, 8, &[0xff; 2000]);
        }
        let mut input = Vec::new();
        field(&mut input, 1, b"image");
        field(&mut input, 5, &contents);
        let mut images = Vec::new();
        field(&mut images, 5, &input);
        infer_request(&images, &SIZES).unwrap();
    }

    #[test]
    fn broken_wire_is_refused_not_skipped() {
        // A length running past the end, a group, field number 0, an endless varint.
        for wire in [
            &[0x2a, 0x05, 0][..],
            &[0x2b],
            &[0x02, 0],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            let e = infer_request(wire, &SIZES).unwrap_err();
            assert!(e.message().starts_with("malformed"), "{wire:?}: {e:?}");
        }
    }

    #[test]
    fn other_requests_are_small() {
        small_request(&[0; SMALL_REQUEST_BYTES]).unwrap();
        assert!(small_request(&[0; SMALL_REQUEST_BYTES + 1]).is_err());
    }
}

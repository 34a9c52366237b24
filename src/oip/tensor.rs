//! Tensor elements on the wire: shapes, little-endian FP32, and BYTES elements each prefixed by
//! its length (4-byte little-endian), as the protocol's binary forms carry them.

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};

/// The number of elements of `shape`; refuses negative dimensions and overflow.
pub fn element_count(shape: &[i64]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::BadInput(format!("negative dimension {d} in shape {shape:?}")))?;
        acc.checked_mul(d)
            .ok_or_else(|| Error::BadInput(format!("shape {shape:?} is too large")))
    })
}

/// FP32 elements from their little-endian bytes.
pub fn fp32_from_le(raw: &[u8]) -> Result<Vec<f32>> {
    if !raw.len().is_multiple_of(4) {
        return Err(Error::BadInput(format!(
            "{} bytes of FP32 data is not a whole number of elements",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Little-endian bytes of FP32 elements.
pub fn fp32_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// BYTES elements from their length-prefixed form, at most `max` of them (a declared count: 4
/// bytes of prefix must not become a 32-byte handle without bound); the elements share `raw`'s
/// buffer.
pub fn bytes_from_raw(raw: &Bytes, max: usize) -> Result<Vec<Bytes>> {
    let mut rest = raw.clone();
    let mut elements = Vec::new();
    while rest.has_remaining() {
        if elements.len() == max {
            return Err(Error::BadInput(format!(
                "BYTES data holds more than the {max} elements its shape declares"
            )));
        }
        if rest.remaining() < 4 {
            return Err(Error::BadInput(format!(
                "BYTES data ends inside the length prefix of element {}",
                elements.len()
            )));
        }
        let len = rest.get_u32_le() as usize;
        if rest.remaining() < len {
            return Err(Error::BadInput(format!(
                "BYTES element {} declares {len} bytes but only {} remain",
                elements.len(),
                rest.remaining()
            )));
        }
        elements.push(rest.split_to(len));
    }
    Ok(elements)
}

/// The length-prefixed form of BYTES elements.
pub fn bytes_to_raw<T: AsRef<[u8]>>(elements: &[T]) -> Vec<u8> {
    let total = elements.iter().map(|e| 4 + e.as_ref().len()).sum();
    let mut raw = Vec::with_capacity(total);
    for e in elements {
        let e = e.as_ref();
        // Elements are at most the body limit, far below 4 GiB.
        raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
        raw.extend_from_slice(e);
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts() {
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert_eq!(element_count(&[2, 3, 4]).unwrap(), 24);
        assert_eq!(element_count(&[5, 0]).unwrap(), 0);
        assert!(element_count(&[-1, 3]).is_err());
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
    }

    #[test]
    fn fp32_round_trip_and_ragged_bytes() {
        let v = [1.5f32, -0.0, f32::MAX, 3.25e-8];
        let raw = fp32_to_le(&v);
        assert_eq!(raw.len(), 16);
        assert_eq!(fp32_from_le(&raw).unwrap(), v);
        assert!(fp32_from_le(&raw[..15]).is_err());
    }

    #[test]
    fn bytes_round_trip_and_truncation() {
        let elements: [&[u8]; 3] = [b"abc", b"", b"\x00\xff"];
        let raw = Bytes::from(bytes_to_raw(&elements));
        assert_eq!(raw.len(), 4 * 3 + 5);
        let back = bytes_from_raw(&raw, 3).unwrap();
        assert_eq!(back, elements.map(Bytes::from_static).to_vec());
        assert!(bytes_from_raw(&Bytes::new(), 0).unwrap().is_empty());
        // More elements than declared, a cut inside a prefix, and inside an element.
        assert!(bytes_from_raw(&raw, 2).is_err());
        assert!(bytes_from_raw(&raw.slice(..2), 3).is_err());
        assert!(bytes_from_raw(&raw.slice(..6), 3).is_err());
    }
}

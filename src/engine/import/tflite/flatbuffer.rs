//! A bounds-checked reader of the FlatBuffers binary format, as much of it as a TFLite model
//! needs: tables with their vtables, scalars, strings, and vectors of scalars and of tables.
//!
//! A model file comes from outside, so every offset is checked before it is followed: a
//! truncated or hostile file gives [`Error::MalformedModel`], never a panic or a read out of
//! bounds. Nothing is copied until a caller asks for the values.

use crate::error::{Error, Result};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::MalformedModel(format!("TFLite flatbuffer: {what}"))
}

/// `N` bytes at `at`, or an error naming what was being read.
fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed(format!("offset {at} is past the end ({} bytes)", buf.len())))
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    bytes_at(buf, at).map(u16::from_le_bytes)
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    bytes_at(buf, at).map(u32::from_le_bytes)
}

fn i32_at(buf: &[u8], at: usize) -> Result<i32> {
    bytes_at(buf, at).map(i32::from_le_bytes)
}

/// The position an unsigned offset stored at `at` points to.
fn follow(buf: &[u8], at: usize) -> Result<usize> {
    let target = at
        .checked_add(u32_at(buf, at)? as usize)
        .filter(|&t| t < buf.len())
        .ok_or_else(|| malformed(format!("the offset at {at} points past the end")))?;
    Ok(target)
}

/// One table: its position and its vtable (which says where each field is, if present).
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Table<'a> {
    /// The root table of a buffer.
    pub fn root(buf: &'a [u8]) -> Result<Self> {
        Table::at(buf, follow(buf, 0)?)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self> {
        let vtable = (pos as i64)
            .checked_sub(i64::from(i32_at(buf, pos)?))
            .filter(|&v| v >= 0 && (v as usize) < buf.len())
            .ok_or_else(|| malformed(format!("the table at {pos} has its vtable out of bounds")))?
            as usize;
        let vtable_len = usize::from(u16_at(buf, vtable)?);
        if vtable_len < 4 || vtable + vtable_len > buf.len() {
            return Err(malformed(format!(
                "the vtable at {vtable} is {vtable_len} bytes"
            )));
        }
        Ok(Table {
            buf,
            pos,
            vtable,
            vtable_len,
        })
    }

    /// Where field `id` is stored, when the table has it.
    fn field(&self, id: usize) -> Result<Option<usize>> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vtable_len {
            return Ok(None);
        }
        match u16_at(self.buf, self.vtable + slot)? {
            0 => Ok(None),
            offset => Ok(Some(self.pos + usize::from(offset))),
        }
    }

    /// A 1-byte scalar field (enums, bools), or `default` when absent.
    pub fn u8(&self, id: usize, default: u8) -> Result<u8> {
        self.field(id)?
            .map_or(Ok(default), |at| bytes_at::<1>(self.buf, at).map(|b| b[0]))
    }

    /// A 4-byte signed field, or `default` when absent.
    pub fn i32(&self, id: usize, default: i32) -> Result<i32> {
        self.field(id)?
            .map_or(Ok(default), |at| i32_at(self.buf, at))
    }

    /// A 4-byte unsigned field, or `default` when absent.
    pub fn u32(&self, id: usize, default: u32) -> Result<u32> {
        self.field(id)?
            .map_or(Ok(default), |at| u32_at(self.buf, at))
    }

    /// A 4-byte float field, or `default` when absent.
    pub fn f32(&self, id: usize, default: f32) -> Result<f32> {
        self.field(id)?.map_or(Ok(default), |at| {
            bytes_at(self.buf, at).map(f32::from_le_bytes)
        })
    }

    /// A table field.
    pub fn table(&self, id: usize) -> Result<Option<Table<'a>>> {
        self.field(id)?
            .map(|at| Table::at(self.buf, follow(self.buf, at)?))
            .transpose()
    }

    /// A vector field.
    pub fn vector(&self, id: usize) -> Result<Option<Vector<'a>>> {
        self.field(id)?
            .map(|at| {
                let start = follow(self.buf, at)?;
                Ok(Vector {
                    buf: self.buf,
                    start: start + 4,
                    len: u32_at(self.buf, start)? as usize,
                })
            })
            .transpose()
    }

    /// A string field (UTF-8 is not required of names: invalid bytes are replaced).
    pub fn string(&self, id: usize) -> Result<Option<String>> {
        Ok(self
            .vector(id)?
            .map(|v| v.bytes(1))
            .transpose()?
            .map(|b| String::from_utf8_lossy(b).into_owned()))
    }
}

/// A vector: `len` elements after a length prefix.
#[derive(Debug, Clone, Copy)]
pub struct Vector<'a> {
    buf: &'a [u8],
    start: usize,
    len: usize,
}

impl<'a> Vector<'a> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The raw bytes of its elements, `size` bytes each.
    pub fn bytes(&self, size: usize) -> Result<&'a [u8]> {
        self.len
            .checked_mul(size)
            .and_then(|n| self.start.checked_add(n))
            .and_then(|end| self.buf.get(self.start..end))
            .ok_or_else(|| {
                malformed(format!(
                    "a vector of {} elements at {} runs past the end",
                    self.len, self.start
                ))
            })
    }

    /// Where its elements lie in the buffer, `size` bytes each.
    pub fn byte_range(&self, size: usize) -> Result<std::ops::Range<usize>> {
        let bytes = self.bytes(size)?;
        Ok(self.start..self.start + bytes.len())
    }

    /// Its elements as 4-byte signed integers.
    pub fn i32s(&self) -> Result<Vec<i32>> {
        Ok(self
            .bytes(4)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Its elements as 4-byte floats.
    pub fn f32s(&self) -> Result<Vec<f32>> {
        Ok(self
            .bytes(4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Its elements as 8-byte signed integers.
    pub fn i64s(&self) -> Result<Vec<i64>> {
        Ok(self
            .bytes(8)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    /// Element `i` of a vector of tables.
    pub fn table(&self, i: usize) -> Result<Table<'a>> {
        if i >= self.len {
            return Err(malformed(format!(
                "element {i} of a vector of {}",
                self.len
            )));
        }
        let at = self.start + 4 * i;
        Table::at(self.buf, follow(self.buf, at)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer with a root table of one i32 field (id 1) = 7 and one vector field (id 0) of
    /// two i32 [3, 4], laid out by hand as a FlatBuffers builder would.
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(12u32.to_le_bytes()); // root offset -> table at 12
                                       // vtable at 4: size 8, table size 12, field 0 at +4, field 1 at +8
        b.extend(8u16.to_le_bytes());
        b.extend(12u16.to_le_bytes());
        b.extend(4u16.to_le_bytes());
        b.extend(8u16.to_le_bytes());
        // table at 12: soffset to vtable (12 - 4 = 8), vector offset, the i32
        b.extend(8i32.to_le_bytes());
        b.extend(8u32.to_le_bytes()); // at 16 -> 24
        b.extend(7i32.to_le_bytes()); // at 20
        b.extend(2u32.to_le_bytes()); // vector at 24: length 2
        b.extend(3i32.to_le_bytes());
        b.extend(4i32.to_le_bytes());
        b
    }

    #[test]
    fn reads_fields_and_defaults() {
        let buf = sample();
        let t = Table::root(&buf).unwrap();
        assert_eq!(t.i32(1, 0).unwrap(), 7);
        assert_eq!(t.vector(0).unwrap().unwrap().i32s().unwrap(), vec![3, 4]);
        assert_eq!(t.i32(5, -1).unwrap(), -1, "absent field takes its default");
        assert!(t.table(5).unwrap().is_none());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let buf = sample();
        for len in 0..buf.len() {
            let cut = &buf[..len];
            let read = Table::root(cut).and_then(|t| {
                t.i32(1, 0)?;
                t.vector(0)?.map(|v| v.i32s()).transpose()
            });
            assert!(read.is_err(), "a buffer cut at {len} bytes was read");
        }
    }

    #[test]
    fn hostile_offsets_are_errors() {
        let mut buf = sample();
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = Table::root(&buf).unwrap();
        assert!(t.vector(0).is_err());
        let mut buf = sample();
        buf[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = Table::root(&buf).unwrap();
        assert!(t.vector(0).unwrap().unwrap().i32s().is_err());
    }
}

//! A growable buffer of `f32` whose first value starts a cache line.
//!
//! A 512-bit load or store that straddles two cache lines costs two L1 accesses. `Vec<f32>` is
//! only 4-byte aligned, and glibc hands out large blocks 16 bytes past a page boundary, so every
//! vector access to activations and packed weights held in a `Vec` straddled lines: on this
//! machine's AVX-512 GEMM that cost about 15 % (1x1-conv shapes of 1.0_224, measured with the
//! same buffers at a 64-byte and at a 16-byte offset).

use std::fmt;
use std::ops::{Deref, DerefMut};

/// Values per cache line.
const LINE_VALUES: usize = 16;

/// One 64-byte cache line of values: the unit the buffer allocates in, which gives it its
/// alignment.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; LINE_VALUES]);

const _: () = assert!(std::mem::size_of::<Line>() == LINE_VALUES * 4);

/// A `Vec<f32>`-like buffer aligned to 64 bytes. It derefs to `[f32]`.
#[derive(Clone, Default)]
pub struct AlignedVec {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedVec {
    /// An empty buffer; allocates nothing.
    pub const fn new() -> Self {
        AlignedVec {
            lines: Vec::new(),
            len: 0,
        }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[f32]) -> Self {
        let mut v = Self::new();
        v.resize(values.len());
        v.copy_from_slice(values);
        v
    }

    /// An empty buffer with room for `len` values whose pages are already resident: reserved but
    /// untouched memory only becomes resident when first written, which would show later as a
    /// rise in RSS and as page faults inside a timed run.
    pub fn resident(len: usize) -> Self {
        // Not zeros: an allocation filled with zeros may be turned into calloc, whose fresh pages
        // stay untouched. The values are never read (the length goes back to 0).
        let mut lines = Vec::with_capacity(len.div_ceil(LINE_VALUES));
        lines.resize(lines.capacity(), Line([1.0; LINE_VALUES]));
        lines.clear();
        AlignedVec { lines, len: 0 }
    }

    /// Values the buffer holds without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * LINE_VALUES
    }

    /// Sets the length to `len`; new values are zero, as with `Vec::resize(len, 0.0)`.
    pub fn resize(&mut self, len: usize) {
        let old = self.len;
        self.resize_for_overwrite(len);
        if len > old {
            self[old..].fill(0.0);
        }
    }

    /// Sets the length to `len` without clearing what it exposes: the values are whatever the
    /// buffer last held there (zeros where it never held anything). For outputs that a kernel
    /// overwrites whole, where zeroing would only cost a pass over memory.
    pub fn resize_for_overwrite(&mut self, len: usize) {
        let lines = len.div_ceil(LINE_VALUES);
        if lines > self.lines.len() {
            self.lines.resize(lines, Line([0.0; LINE_VALUES]));
        }
        self.len = len;
    }

    /// Makes room for `len` values in all, keeping the length.
    pub fn reserve_total(&mut self, len: usize) {
        let lines = len.div_ceil(LINE_VALUES);
        self.lines
            .reserve_exact(lines.saturating_sub(self.lines.len()));
    }
}

impl Deref for AlignedVec {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialised f32 values laid out contiguously
        // (`Line` is `repr(C)` over an f32 array, with no padding: asserted above).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

impl fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedVec")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::AlignedVec;

    #[test]
    fn starts_on_a_cache_line_and_behaves_like_a_vec() {
        let mut v = AlignedVec::new();
        assert!(v.is_empty());
        for len in [1, 15, 16, 17, 1000, 3, 40_000] {
            v.resize(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % 64, 0, "len {len}");
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        }
        // Growing zeroes the new values, as Vec::resize does, even inside an existing line.
        v.resize(3);
        v.resize(20);
        assert_eq!(&v[..5], &[0.0, 1.0, 2.0, 0.0, 0.0]);
        let copy = AlignedVec::from_slice(&v);
        assert_eq!(&copy[..], &v[..]);
        assert_eq!(copy.as_ptr() as usize % 64, 0);
    }

    #[test]
    fn resident_buffers_hold_their_capacity_without_growing() {
        let mut v = AlignedVec::resident(1000);
        assert!(v.is_empty() && v.capacity() >= 1000);
        let before = v.as_ptr();
        v.resize_for_overwrite(1000);
        assert_eq!(
            v.as_ptr(),
            before,
            "no reallocation within the reserved capacity"
        );
        v.reserve_total(4000);
        assert!(v.capacity() >= 4000 && v.len() == 1000);
    }
}

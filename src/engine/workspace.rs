//! The buffers a run writes its activations into, reused from run to run so that steady-state
//! inference does not allocate: float ones for float models, byte ones for quantized models.

use crate::kernels::int8::Requant;
use crate::kernels::AlignedVec;

/// How much of each kind of buffer a run needs: what a [`Workspace`] is sized by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The largest float activation (input included), in values: each of the two float buffers.
    pub values: usize,
    /// The largest uint8 activation (the quantized input included): each of the two byte buffers.
    pub bytes: usize,
    /// The quantized stem's patch matrix, in bytes.
    pub patches: usize,
}

impl Footprint {
    /// What runs of `self` and of `other` both fit in.
    pub fn max(self, other: Footprint) -> Footprint {
        Footprint {
            values: self.values.max(other.values),
            bytes: self.bytes.max(other.bytes),
            patches: self.patches.max(other.patches),
        }
    }
}

/// Reusable activation buffers. One per thread that starts runs; a run's layers alternate
/// between the two buffers of its kind.
#[derive(Debug, Default)]
pub struct Workspace {
    pub(super) floats: Pair<AlignedVec>,
    pub(super) bytes: Pair<Vec<u8>>,
    /// The stem's patches, for quantized models (see `kernels::int8::generic::im2col`).
    pub(super) patches: Vec<u8>,
    /// The global average pool's requantization, which depends on the feature map's size.
    pub(super) pool: Requant,
}

/// The two buffers a run alternates between.
#[derive(Debug, Default)]
pub(super) struct Pair<T> {
    pub(super) front: T,
    pub(super) back: T,
}

impl Workspace {
    /// An empty workspace; its buffers grow to the largest activation they meet and keep that
    /// size.
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace whose buffers hold `footprint`, so that runs needing at most that
    /// (`Network::footprint`) never allocate activation buffers, the first one included. Their
    /// memory is made resident now (see [`AlignedVec::resident`]). The kernels' own per-thread
    /// scratch (packed GEMM rows, padding rows) is not in it: it grows at the first run of a
    /// new largest shape and then stays.
    pub fn with_capacity(footprint: Footprint) -> Self {
        Workspace {
            floats: Pair {
                front: AlignedVec::resident(footprint.values),
                back: AlignedVec::resident(footprint.values),
            },
            bytes: Pair {
                front: resident_bytes(footprint.bytes),
                back: resident_bytes(footprint.bytes),
            },
            patches: resident_bytes(footprint.patches),
            pool: Requant::default(),
        }
    }
}

/// An empty vector with room for `len` values whose pages are already resident. Reserved but
/// untouched memory only becomes resident when a batch first reaches it: a soak at 70 % load
/// saw RSS step up by 103 MiB after nine minutes, at the first full batch. Written once here,
/// the process holds from the start what its largest batch needs, and a later rise is a leak.
pub fn resident_vec(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // Not zeros: an allocation filled with zeros may be turned into calloc, whose fresh pages
    // stay untouched. The values are never read (the length goes back to 0).
    v.resize(len, 1.0);
    v.clear();
    v
}

/// [`resident_vec`] for bytes.
fn resident_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 1);
    v.clear();
    v
}

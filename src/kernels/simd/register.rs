//! The abstraction the vector kernels are written over: one SIMD register type and the few
//! operations they need ([`Simd`]), and the loads, stores and panel rules every kernel shares.

/// One SIMD register type and the few operations the kernels need.
///
/// # Safety
/// The kernels size every pointer offset by these constants, so an implementation must keep
/// them true: `V` holds `LANES` f32 lanes, `LANES <= 64`; `load` and `store` access exactly
/// `LANES` consecutive values and `load_partial` and `store_partial` only the first `n`; `PANEL`
/// is a multiple of `LANES`.
///
/// Its methods may use instructions of any of the CPU features the tier's entry points enable:
/// callers must only run them in code compiled with those features (the `#[target_feature]`
/// entry points, into which these `#[inline(always)]` methods are inlined), after run-time
/// detection found them. Each method's own `# Safety` adds what its pointers must reach.
pub(crate) unsafe trait Simd {
    /// The register type.
    type V: Copy;
    /// f32 lanes per register.
    const LANES: usize;
    /// Rows of the GEMM microkernel's full-width tile.
    const MR: usize;
    /// Vectors per weight panel (1 to 4): the full-width tile keeps `MR * NV` accumulators,
    /// which with `NV` weight vectors and a broadcast must fit in the register file.
    const NV: usize;
    /// Columns per packed weight panel, the row stride of the packed layout: `NV * LANES`, or a
    /// wider tier's panel width for narrow vectors that run on that tier's packed weights (then
    /// only on layers of at most `NV * LANES` columns, one partial panel).
    const PANEL: usize;
    /// Whether the GEMM copies each block of A into tiles of `MR` rows (`[k][MR]`) before the
    /// microkernel runs on it, rather than reading A in place (see the tiers for what measured).
    const REPACK_A: bool;

    /// A register of zeros.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait).
    unsafe fn zero() -> Self::V;
    /// `x` in every lane.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait).
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads `LANES` values from `p` (no alignment needed).
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait), and `p` readable
    /// for `LANES` values.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Stores `LANES` values at `p` (no alignment needed).
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait), and `p` writable
    /// for `LANES` values.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads the first `n < LANES` lanes, zeroing the rest.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait), and `p` readable
    /// for `n` values; the lanes past them are not accessed.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V;
    /// Stores the first `n < LANES` lanes.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait), and `p` writable
    /// for `n` values; the values past them are not accessed.
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize);
    /// `a * b + c` with one rounding.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait).
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait).
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `min(max(v, lo), hi)`, NaN-compatible with [`Clamp::apply`](crate::kernels::shapes::Clamp::apply).
    ///
    /// # Safety
    /// The CPU features of the implementation must be enabled (see the trait).
    unsafe fn clamp(v: Self::V, lo: Self::V, hi: Self::V) -> Self::V;
}

/// Loads `n` lanes (all when `n >= LANES`), zeroing the rest.
///
/// # Safety
/// `S`'s CPU features must be enabled, and `p` readable for `min(n, LANES)` values.
#[inline(always)]
pub(super) unsafe fn load_n<S: Simd>(p: *const f32, n: usize) -> S::V {
    // SAFETY: the features are enabled and `p` reaches `min(n, LANES)` values (the caller's
    // contract): all `LANES` that `load` reads when `n >= LANES`, else the `n` of `load_partial`.
    unsafe {
        if n >= S::LANES {
            S::load(p)
        } else {
            S::load_partial(p, n)
        }
    }
}

/// Stores `n` lanes (all when `n >= LANES`).
///
/// # Safety
/// `S`'s CPU features must be enabled, and `p` writable for `min(n, LANES)` values.
#[inline(always)]
pub(super) unsafe fn store_n<S: Simd>(p: *mut f32, v: S::V, n: usize) {
    // SAFETY: the features are enabled and `p` reaches `min(n, LANES)` values (the caller's
    // contract): all `LANES` that `store` writes when `n >= LANES`, else the `n` of
    // `store_partial`.
    unsafe {
        if n >= S::LANES {
            S::store(p, v)
        } else {
            S::store_partial(p, v, n)
        }
    }
}

/// Columns per packed weight panel.
#[inline(always)]
pub(crate) const fn panel_width<S: Simd>() -> usize {
    S::PANEL
}

/// Checks that a layer of `n` columns fits the vectors of `S`: every panel of it has at most
/// `NV` vectors of columns in use (always true but for narrow vectors on a wider layout).
#[inline(always)]
pub(super) fn assert_fits<S: Simd>(n: usize) {
    assert!(
        S::PANEL <= S::NV * S::LANES || n <= S::NV * S::LANES,
        "{n} columns on vectors of {} lanes in panels of {}",
        S::LANES,
        S::PANEL
    );
}

//! How one step of a run is cut between the threads of a crew: which part computes which
//! output rows (bands, or whole images) or which GEMM weight panels, and the bands of rows each
//! part's share is cut into. Kept apart from the model, which says what a step computes and
//! hands it here as a closure or a GEMM: a cut must never change a value, only where it is
//! computed, so that a run gives the same bits on any number of threads.

use super::team::{split, Crew};
use crate::kernels::{AlignedVec, Clamp, ConvGeometry, GemmShape, KernelSet};

/// Runs a convolution split into bands of output rows: one per part (whole images when they
/// divide evenly between the parts), cut again into bands of at most `max_rows` rows. `conv` gets
/// a band's geometry, the input rows it reads and its output, `row_len` values per output row.
pub(super) fn split_rows<T: Send + Sync, F>(
    crew: &Crew<'_>,
    g: &ConvGeometry,
    input: &[T],
    out: &mut [T],
    row_len: usize,
    max_rows: usize,
    conv: &F,
) where
    F: Fn(&ConvGeometry, &[T], &mut [T]) + Sync,
{
    if crew.parts() <= 1 && max_rows >= g.out_h {
        conv(g, input, out);
        return;
    }
    // Whole images per part when they divide evenly; else bands of rows across images, which
    // balance better (3 images on 2 threads: 1.5 each, not 2 and 1).
    let align = if g.batch.is_multiple_of(crew.parts()) {
        g.out_h
    } else {
        1
    };
    let in_row = g.in_w * g.in_c;
    split(
        crew,
        g.batch * g.out_h,
        align,
        row_len,
        out,
        &|band, out| {
            // A band may span images: one kernel call per image it touches and per max_rows.
            let (mut row, mut done) = (band.start, 0);
            while row < band.end {
                let image = row / g.out_h;
                let first = row - image * g.out_h;
                let last = (band.end - image * g.out_h)
                    .min(g.out_h)
                    .min(first.saturating_add(max_rows));
                let (geometry, in_rows) = g.row_band(first..last);
                let image_input = &input[image * g.in_h * in_row..][..g.in_h * in_row];
                let len = (last - first) * row_len;
                conv(
                    &geometry,
                    &image_input[in_rows.start * in_row..in_rows.end * in_row],
                    &mut out[done..done + len],
                );
                done += len;
                row = image * g.out_h + last;
            }
        },
    );
}

/// Below this many rows per thread a GEMM is split by weight panels rather than rows: each
/// thread then streams half the weights instead of all of them. First set at 24 (two tiles of
/// the former 12-row AVX-512 microkernel); 32 takes in the 7x7 maps of the 224 inputs at batch 1
/// (49 rows, which a row split cut into 30 + 19). On two Zen 3 threads their 1024 -> 1024
/// pointwise then took 0.875x the time (fastest of 6 interleaved `bench --layers` runs), and
/// whole runs of the four 224 variants 0.985-0.994x (fastest runs, 6 interleaved rounds).
const FEW_ROWS_PER_PART: usize = 32;

/// Runs a GEMM split between the crew: by bands of rows, or, with fewer than
/// [`FEW_ROWS_PER_PART`] rows per thread (a batch-1 FC, the small maps of the last layers), by
/// weight panels. Each part then computes its panels' columns, panel by panel, into the caller's
/// scratch, and they are copied to their place in `c` afterwards. Either way every value is the
/// same sum in the same order as in an unsplit GEMM. The layer comes as one argument, its packed
/// weights, bias and clamp, as every part passes them on to the kernel together.
pub(super) fn split_gemm(
    crew: &Crew<'_>,
    k: &KernelSet,
    s: &GemmShape,
    a: &[f32],
    (packed, bias, act): (&[f32], &[f32], Clamp),
    c: &mut [f32],
) {
    // (An empty GEMM has nothing to split, and no panel blocks to cut.)
    let few_rows = s.m > 0 && s.m < FEW_ROWS_PER_PART * crew.parts();
    let nr = match k.gemm_panel_cols {
        Some(nr) if crew.parts() > 1 && few_rows && s.n > nr => nr,
        _ => {
            return split(crew, s.m, k.gemm_rows, s.n, c, &|rows, out| {
                let part = GemmShape {
                    m: rows.len(),
                    ..*s
                };
                (k.gemm)(
                    &part,
                    &a[rows.start * s.k..rows.end * s.k],
                    packed,
                    bias,
                    act,
                    out,
                )
            })
        }
    };
    let panels = s.n.div_ceil(nr);
    let cols = |j: usize| nr.min(s.n - j * nr);
    let mut blocks = COLUMN_BLOCKS.take();
    blocks.resize_for_overwrite(panels * s.m * nr);
    split(crew, panels, 1, s.m * nr, &mut blocks, &|range, out| {
        for (j, block) in range.zip(out.chunks_exact_mut(s.m * nr)) {
            let part = GemmShape { n: cols(j), ..*s };
            let weights = &packed[j * s.k * nr..(j + 1) * s.k * nr];
            let bias = &bias[j * nr..j * nr + part.n];
            (k.gemm)(&part, a, weights, bias, act, &mut block[..s.m * part.n]);
        }
    });
    for (j, block) in blocks.chunks_exact(s.m * nr).enumerate() {
        let n = cols(j);
        for (row, values) in block[..s.m * n].chunks_exact(n).enumerate() {
            c[row * s.n + j * nr..][..n].copy_from_slice(values);
        }
    }
    COLUMN_BLOCKS.set(blocks);
}

thread_local! {
    /// The calling thread's scratch for the column blocks of [`split_gemm`].
    static COLUMN_BLOCKS: std::cell::Cell<AlignedVec> = const { std::cell::Cell::new(AlignedVec::new()) };
}

#[cfg(test)]
mod tests {
    use super::split_gemm;
    use crate::engine::team::Team;
    use crate::kernels::{Clamp, GemmShape, KernelSet};

    /// Every tier's GEMM split by rows or by panels on 2 threads equals the unsplit GEMM, bit for
    /// bit, from no rows to many, with last panels of every kind; a GEMM without rows writes
    /// nothing and does not panic.
    #[test]
    fn split_gemms_equal_unsplit_ones() {
        let team = Team::new(2, "split-gemm-test", || {}).expect("team");
        for tier in crate::kernels::Tier::supported() {
            let k = KernelSet::for_tier(tier).expect("tier");
            for (m, kk, n) in [
                (0, 4, 40),
                (1, 16, 100),
                (5, 3, 33),
                (30, 8, 70),
                (49, 16, 100),
                // A last panel of 24 columns, which AVX-512 may run on its narrow vectors.
                (20, 9, 88),
                (100, 5, 20),
            ] {
                let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
                let a: Vec<f32> = (0..m * kk).map(value).collect();
                let b: Vec<f32> = (0..kk * n).map(|i| value(i + 5)).collect();
                let bias: Vec<f32> = (0..n).map(|i| value(i + 9)).collect();
                let packed = (k.pack_gemm_b)(kk, n, &b);
                let s = GemmShape { m, k: kk, n };
                let mut want = vec![0.0; m * n];
                (k.gemm)(&s, &a, &packed, &bias, Clamp::RELU6, &mut want);
                let mut got = vec![f32::NAN; m * n];
                team.install(|crew| {
                    split_gemm(crew, &k, &s, &a, (&packed, &bias, Clamp::RELU6), &mut got)
                });
                assert_eq!(got, want, "{tier} {m}x{kk}x{n}");
            }
        }
    }
}

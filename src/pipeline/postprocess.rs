//! Model outputs -> probabilities and the top-k classes.

/// Replaces logits by their softmax, computed stably (max subtracted first).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// The `k` highest scores as `(index, score)`, best first; ties keep the lower index first.
/// NaN scores rank last.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            scores[i]
        }
    };
    // A total order (ties broken by index), so selecting the k best first and sorting only
    // them gives exactly what sorting everything would.
    let order = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    if k < idx.len() {
        if k > 0 {
            idx.select_nth_unstable_by(k - 1, order);
        }
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx.into_iter().map(|i| (i, scores[i])).collect()
}

/// Index of the highest score (the first one on ties).
pub fn argmax(scores: &[f32]) -> usize {
    top_k(scores, 1).first().map(|p| p.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v = vec![1.0, 3.0, -2.0, 10.0];
        softmax_in_place(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&v), 3);
        assert!(v[1] > v[0] && v[0] > v[2]);
        // Huge logits must not overflow to NaN.
        let mut big = vec![1000.0, 0.0];
        softmax_in_place(&mut big);
        assert_eq!(big, [1.0, 0.0]);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let v = [0.1, 0.5, 0.5, f32::NAN, 0.9];
        let t = top_k(&v, 3);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), vec![4, 1, 2]);
        assert_eq!(top_k(&v, 10).len(), 5);
        assert_eq!(top_k(&v, 10)[4].0, 3);
    }

    #[test]
    fn top_k_selects_what_a_full_sort_would() {
        // Few distinct values, so ties are everywhere.
        let mut state = 7u64;
        let v: Vec<f32> = (0..1001)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((state >> 33) % 17) as f32
            })
            .collect();
        let mut full: Vec<usize> = (0..v.len()).collect();
        full.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        for k in [0, 1, 2, 5, 100, 1000, 1001, 5000] {
            let got: Vec<usize> = top_k(&v, k).into_iter().map(|p| p.0).collect();
            assert_eq!(got, full[..k.min(v.len())], "k = {k}");
        }
    }
}

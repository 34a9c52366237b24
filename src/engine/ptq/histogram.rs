//! Percentiles of a stream of non-negative values in fixed memory: a histogram whose range
//! doubles when a larger value arrives, merging bins in pairs, so that no value is ever
//! re-binned approximately and no first pass is needed to learn the range.

/// Bins of every histogram: the percentile is resolved to 1/2048 of the range seen.
const BINS: usize = 2048;
/// The upper bound of the first range; doubled as values require.
const FIRST_TOP: f32 = 1.0 / 65536.0;

/// Counts of values in `BINS` equal bins over `[0, top)`.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    top: f32,
    total: u64,
    max: f32,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BINS],
            top: FIRST_TOP,
            total: 0,
            max: 0.0,
        }
    }
}

impl Histogram {
    /// Counts `v`, which must be finite and not negative (the caller's check).
    pub fn add(&mut self, v: f32) {
        debug_assert!(v.is_finite() && v >= 0.0, "histogram value {v}");
        while v >= self.top {
            self.double();
        }
        let bin = ((v / self.top) * BINS as f32) as usize;
        self.counts[bin.min(BINS - 1)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// How many values were counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The smallest bin edge at or below which `percent`% of the values lie (never above the
    /// largest value seen); 0 when nothing was counted.
    pub fn percentile(&self, percent: f64) -> f32 {
        if self.total == 0 {
            return 0.0;
        }
        let wanted = ((percent / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= wanted {
                let edge = (i + 1) as f32 * self.top / BINS as f32;
                return edge.min(self.max);
            }
        }
        self.max
    }

    /// Doubles the range: bins `2i` and `2i + 1` become bin `i`, the upper half empties.
    fn double(&mut self) {
        for i in 0..BINS / 2 {
            self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
        }
        self.counts[BINS / 2..].fill(0);
        self.top *= 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_ramp() {
        let mut h = Histogram::default();
        for i in 0..10_000 {
            h.add(i as f32 / 1000.0);
        }
        assert_eq!(h.total(), 10_000);
        assert_eq!(h.percentile(100.0), 9.999);
        // The range grew to 16: bins are 1/128 wide, so a percentile is within one bin.
        for (p, want) in [(50.0, 5.0), (90.0, 9.0), (99.0, 9.9)] {
            let got = h.percentile(p);
            assert!((got - want).abs() <= 16.0 / 2048.0 + 1e-3, "{p}: {got}");
        }
    }

    #[test]
    fn an_outlier_is_clipped_and_the_maximum_is_kept() {
        let mut h = Histogram::default();
        for _ in 0..100_000 {
            h.add(1.0);
        }
        h.add(1000.0);
        assert!(h.percentile(99.99) <= 1.0 + 1024.0 / 2048.0);
        assert_eq!(h.percentile(100.0), 1000.0);
    }

    #[test]
    fn zeros_and_nothing() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(99.0), 0.0);
        h.add(0.0);
        assert_eq!(h.percentile(99.0), 0.0);
    }
}

//! Sum tree for proportional prioritized experience replay.
//!
//! Proportional prioritization (Schaul et al. 2016, "Prioritized Experience Replay",
//! section 3.3 and appendix B.2.1) samples transition `i` with probability
//! `p_i / sum_k p_k`. Drawing from that distribution and updating a priority after every
//! learner step must both be cheap for buffers of millions of transitions; a sum tree does
//! each in O(log n) (`total` is O(1)).
//!
//! Layout: a complete binary tree in one array, 1-based as in a binary heap. The number of
//! leaves is `capacity` rounded up to a power of two `L`; leaf `i` lives at `nodes[L + i]`,
//! node `j` has children `2j` and `2j + 1` and holds their sum, the root `nodes[1]` holds
//! the total, and `nodes[0]` is unused. Padding leaves (`i >= capacity`) stay 0.

use rand::Rng;

/// Binary sum tree over `capacity` non-negative priorities (Schaul et al. 2016, §3.3).
#[derive(Debug, Clone)]
pub struct SumTree {
    capacity: usize,
    nodes: Vec<f64>,
}

impl SumTree {
    /// Creates a tree of `capacity` leaves, all priorities 0.
    ///
    /// # Panics
    /// If `capacity == 0`.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "SumTree capacity must be positive");
        let nodes = vec![0.0; 2 * capacity.next_power_of_two()];
        Self { capacity, nodes }
    }

    /// Number of leaves (slots in the replay buffer).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn leaves(&self) -> usize {
        self.nodes.len() / 2
    }

    /// Array index of leaf `i`; panics if `i >= capacity`.
    fn leaf(&self, i: usize) -> usize {
        let cap = self.capacity;
        assert!(i < cap, "leaf {i} out of range (capacity {cap})");
        self.leaves() + i
    }

    /// Sets leaf `i`'s priority (unitless, in the same units as every other leaf) in
    /// O(log n). Parents are recomputed as the sums of their two children rather than by
    /// adding a delta, so no rounding error accumulates over millions of updates.
    ///
    /// # Panics
    /// If `i >= capacity()` or `priority` is negative, NaN or infinite.
    pub fn set(&mut self, i: usize, priority: f64) {
        let valid = priority.is_finite() && priority >= 0.0;
        assert!(valid, "bad priority {priority}: must be finite and >= 0");
        let mut j = self.leaf(i);
        self.nodes[j] = priority;
        while j > 1 {
            j /= 2;
            self.nodes[j] = self.nodes[2 * j] + self.nodes[2 * j + 1];
        }
    }

    /// Priority of leaf `i`.
    ///
    /// # Panics
    /// If `i >= capacity()`.
    pub fn get(&self, i: usize) -> f64 {
        self.nodes[self.leaf(i)]
    }

    /// Sum of all priorities, in O(1).
    pub fn total(&self) -> f64 {
        self.nodes[1]
    }

    /// The leaf `i` with `prefix(i) <= mass < prefix(i) + priority(i)`, where `prefix(i)` is
    /// the sum of the priorities of the leaves before `i`; O(log n). `mass` (same units as
    /// the priorities) is clamped into `[0, total())`: below 0 gives the first leaf with a
    /// positive priority, `total()` or more the last one. Never returns a zero-priority
    /// leaf: the descent only enters subtrees with a positive sum, so when rounding leaves
    /// the remaining mass at or past a left sum whose right sibling is 0, it stays left and
    /// ends on the nearest positive leaf before that point.
    ///
    /// # Panics
    /// If `total() == 0` or `mass` is NaN.
    pub fn find(&self, mass: f64) -> usize {
        assert!(self.total() > 0.0, "SumTree total is 0");
        assert!(!mass.is_nan(), "mass must not be NaN");
        let mut m = mass.max(0.0);
        let mut j = 1;
        while j < self.leaves() {
            let (left, right) = (self.nodes[2 * j], self.nodes[2 * j + 1]);
            if m < left || right == 0.0 {
                j *= 2;
            } else {
                m -= left;
                j = 2 * j + 1;
            }
        }
        j - self.leaves()
    }

    /// Stratified sampling (Schaul et al. 2016, appendix B.2.1): `[0, total())` is split
    /// into `n` equal segments and one leaf is drawn from each, uniformly by mass within
    /// the segment. The `n` indices, in segment order, replace the contents of `out`.
    ///
    /// # Panics
    /// If `total() == 0` or `n == 0`.
    pub fn sample_stratified(&self, n: usize, rng: &mut impl Rng, out: &mut Vec<usize>) {
        assert!(n > 0, "sample_stratified needs n > 0");
        assert!(self.total() > 0.0, "SumTree total is 0");
        let segment = self.total() / n as f64;
        out.clear();
        out.extend((0..n).map(|k| self.find(segment * (k as f64 + rng.gen::<f64>()))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn tree(p: &[f64]) -> SumTree {
        let mut t = SumTree::new(p.len());
        p.iter().enumerate().for_each(|(i, &x)| t.set(i, x));
        t
    }

    /// `prefix(i)` for every leaf `i`: the segment boundaries.
    fn prefixes(p: &[f64]) -> Vec<f64> {
        p.iter()
            .scan(0.0, |s, &x| Some(std::mem::replace(s, *s + x)))
            .collect()
    }

    /// Linear-scan reference for `find`, including the clamping rules.
    fn brute_find(p: &[f64], mass: f64) -> usize {
        let mut prefix = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            if pi > 0.0 && mass < prefix + pi {
                return i;
            }
            prefix += pi;
        }
        p.iter().rposition(|&pi| pi > 0.0).unwrap()
    }

    #[test]
    fn find_matches_linear_scan() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..2000 {
            let cap = rng.gen_range(1..=100);
            // Multiples of 1/4 (about 27% zeros) keep every sum exact, boundaries included.
            let mut p: Vec<_> = (0..cap)
                .map(|_| rng.gen_range(-15..=40).max(0) as f64 / 4.0)
                .collect();
            p[rng.gen_range(0..cap)] = 1.0;
            let t = tree(&p);
            let total: f64 = p.iter().sum();
            assert_eq!(t.total(), total);
            let mut masses = vec![-1.0, 0.0, f64::from_bits(total.to_bits() - 1), total, 1e9];
            masses.extend(prefixes(&p));
            masses.extend((0..50).map(|_| rng.gen_range(0.0..total)));
            for &m in &masses {
                assert_eq!(t.find(m), brute_find(&p, m), "mass {m} priorities {p:?}");
            }
            // Inexact priorities: the result is right up to rounding and never a zero leaf.
            let q: Vec<f64> = p.iter().map(|&x| x * rng.gen_range(0.1..1.0)).collect();
            let t = tree(&q);
            let tol = 1e-12 * t.total();
            masses.truncate(2);
            masses.push(f64::from_bits(t.total().to_bits() - 1));
            masses.extend(prefixes(&q));
            for m in masses {
                let i = t.find(m);
                let prefix: f64 = q[..i].iter().sum();
                let m = m.clamp(0.0, t.total());
                let ok = q[i] > 0.0 && prefix - tol <= m && m < prefix + q[i] + tol;
                assert!(ok, "mass {m} gave {i}, priorities {q:?}");
            }
        }
    }

    #[test]
    fn set_get_total_without_drift() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut t = SumTree::new(1000);
        let mut mirror = vec![0.0; 1000];
        for _ in 0..1_000_000 {
            let (i, p) = (rng.gen_range(0..1000), rng.gen_range(0.0..100.0));
            t.set(i, p);
            mirror[i] = p;
        }
        for (i, &p) in mirror.iter().enumerate() {
            assert_eq!(t.get(i), p);
        }
        let direct: f64 = mirror.iter().sum();
        let err = (t.total() - direct).abs();
        assert!(err <= 1e-12 * direct, "total {} vs {direct}", t.total());
        // Every parent is exactly the sum of its children: nothing drifted.
        for j in 1..t.leaves() {
            assert_eq!(t.nodes[j], t.nodes[2 * j] + t.nodes[2 * j + 1]);
        }
    }

    /// Chi-squared statistic of 200,000 stratified draws (batches of 64) against `p / total`.
    fn chi_squared(p: &[f64], seed: u64) -> f64 {
        let t = tree(p);
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut counts, mut batch) = (vec![0u64; p.len()], Vec::new());
        for _ in 0..3125 {
            t.sample_stratified(64, &mut rng, &mut batch);
            batch.iter().for_each(|&i| counts[i] += 1);
        }
        let n = 200_000.0; // 3125 batches of 64
        let mut stat = 0.0;
        for (&c, &pi) in counts.iter().zip(p) {
            if pi == 0.0 {
                assert_eq!(c, 0, "zero-priority leaf drawn");
            } else {
                let expected = n * pi / t.total();
                stat += (c as f64 - expected).powi(2) / expected;
            }
        }
        stat
    }

    #[test]
    fn sampling_distribution_chi_squared() {
        // 0.999 quantiles of chi-squared with df = (positive leaves - 1), computed once by
        // bisecting the regularized lower incomplete gamma function P(df/2, x/2) = 0.999
        // (df 4 agrees with the tables' 18.467). Stratification lowers the variance of the
        // counts below multinomial, so the test is conservative, never flaky (fixed seeds).
        const CHI2_999_DF4: f64 = 18.4668;
        const CHI2_999_DF44: f64 = 78.7495;
        let stat = chi_squared(&[1.0, 2.0, 0.0, 4.0, 8.0, 0.5], 3);
        assert!(stat < CHI2_999_DF4, "chi2 {stat} (df 4)");
        let mut rng = StdRng::seed_from_u64(4);
        // 50 leaves, 5 of them zero (i % 10 == 3): 45 positive, df 44.
        let mut p: Vec<f64> = (0..50).map(|_| rng.gen_range(0.1..10.0)).collect();
        (3..50).step_by(10).for_each(|i| p[i] = 0.0);
        let stat = chi_squared(&p, 5);
        assert!(stat < CHI2_999_DF44, "chi2 {stat} (df 44)");
    }

    #[test]
    fn non_power_of_two_and_capacity_one() {
        let t = tree(&[3.0, 0.0, 1.0, 2.0, 0.0]); // 5 leaves, padded to 8
        assert_eq!((t.capacity(), t.total()), (5, 6.0));
        let got = [-1.0, 2.9, 3.0, 3.5, 4.0, 5.9, 6.0, 1e9].map(|m| t.find(m));
        assert_eq!(got, [0, 0, 2, 2, 3, 3, 3, 3]);
        let mut one = SumTree::new(1);
        one.set(0, 0.7);
        assert_eq!((one.capacity(), one.get(0), one.total()), (1, 0.7, 0.7));
        assert_eq!([-1.0, 0.0, 0.69, 0.7, 5.0].map(|m| one.find(m)), [0; 5]);
        let mut out = Vec::new();
        one.sample_stratified(10, &mut StdRng::seed_from_u64(6), &mut out);
        assert_eq!(out, vec![0; 10]);
    }

    #[test]
    fn stratified_draws_each_equal_leaf_once() {
        let t = tree(&[1.0; 8]);
        let (mut rng, mut out) = (StdRng::seed_from_u64(7), vec![99]);
        for _ in 0..1000 {
            t.sample_stratified(8, &mut rng, &mut out);
            assert_eq!(out, (0..8).collect::<Vec<_>>());
        }
    }

    #[test]
    fn invalid_arguments_panic() {
        use std::panic::catch_unwind;
        assert!(catch_unwind(|| SumTree::new(0)).is_err());
        assert!(catch_unwind(|| SumTree::new(5).set(5, 1.0)).is_err());
        assert!(catch_unwind(|| SumTree::new(5).get(5)).is_err());
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(catch_unwind(|| SumTree::new(4).set(1, bad)).is_err());
        }
        assert!(catch_unwind(|| SumTree::new(4).find(0.0)).is_err());
        assert!(catch_unwind(|| tree(&[1.0]).find(f64::NAN)).is_err());
        let sample = |t: SumTree, n| {
            catch_unwind(move || t.sample_stratified(n, &mut StdRng::seed_from_u64(0), &mut vec![]))
        };
        assert!(sample(SumTree::new(4), 1).is_err());
        assert!(sample(tree(&[1.0]), 0).is_err());
        assert!(sample(tree(&[1.0]), 1).is_ok());
    }
}

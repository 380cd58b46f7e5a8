//! Record choice: uniform, or Zipf-skewed (a few hot records, a long cold tail).

use rand::Rng;

/// How record ids are drawn.
#[derive(Debug, Clone)]
pub(super) enum Picker {
    /// Every record equally likely.
    Uniform(usize),
    /// Record `i` with probability proportional to `1 / (i + 1)^s`: cumulative weights.
    Zipf(Vec<f64>),
}

impl Picker {
    pub(super) fn uniform(n: usize) -> Self {
        Self::Uniform(n.max(1))
    }

    pub(super) fn zipf(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cdf = (0..n.max(1))
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(s);
                total
            })
            .collect();
        Self::Zipf(cdf)
    }

    /// An index in `0..n`.
    pub(super) fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            Self::Uniform(n) => rng.gen_range(0..*n),
            Self::Zipf(cdf) => {
                let total = cdf.last().copied().unwrap_or(1.0);
                let u = rng.gen_range(0.0..total);
                cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let p = Picker::zipf(1000, 0.99);
        let mut rng = rand::thread_rng();
        let mut hits = [0usize; 2];
        for _ in 0..20_000 {
            let i = p.pick(&mut rng);
            assert!(i < 1000);
            hits[usize::from(i >= 10)] += 1;
        }
        // The 10 hottest of 1000 records take far more than 1% of the draws.
        assert!(hits[0] > 20_000 / 5, "{hits:?}");
        let u = Picker::uniform(10);
        assert!((0..1000).all(|_| u.pick(&mut rng) < 10));
    }
}

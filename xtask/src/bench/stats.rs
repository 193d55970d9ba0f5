//! Latency statistics: nearest-rank percentiles over the samples of one run
//! (`weir_common::stats::percentile`, the statistic weir-dev's tables use too).

use std::time::Duration;

/// Samples sorted once, percentiles read off by rank.
#[derive(Clone, Debug)]
pub struct Summary {
    sorted: Vec<Duration>,
}

impl Summary {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self { sorted: samples }
    }

    /// Nearest-rank percentile (`weir_common::stats::percentile`): the
    /// smallest sample with at least `p`% of the samples at or below it.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        weir_common::stats::percentile(&self.sorted, p)
    }

    pub fn median(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.percentile(99.0)
    }
}

/// `a / b`, when both exist and b is not zero.
pub fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (!b.is_zero()).then(|| a.as_secs_f64() / b.as_secs_f64())
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        // 1..=100 ms in random order.
        let mut v: Vec<u64> = (1..=100).collect();
        v.reverse();
        v.swap(3, 70);
        let s = Summary::new(millis(&v));
        assert_eq!(s.median(), Some(Duration::from_millis(50)));
        assert_eq!(s.p99(), Some(Duration::from_millis(99)));
        assert_eq!(s.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn p99_of_thirty_is_the_maximum_and_median_the_fifteenth() {
        let s = Summary::new(millis(&(1..=30).collect::<Vec<_>>()));
        assert_eq!(s.p99(), Some(Duration::from_millis(30)));
        assert_eq!(s.median(), Some(Duration::from_millis(15)));
    }

    #[test]
    fn edge_cases() {
        assert_eq!(Summary::new(vec![]).median(), None);
        let one = Summary::new(millis(&[7]));
        assert_eq!((one.median(), one.p99()), (Some(Duration::from_millis(7)), Some(Duration::from_millis(7))));
        assert_eq!(one.percentile(101.0), None);
        assert_eq!(ratio(Some(Duration::from_millis(5)), Some(Duration::from_millis(10))), Some(0.5));
        assert_eq!(ratio(Some(Duration::from_millis(5)), Some(Duration::ZERO)), None);
        assert_eq!(ms(Some(Duration::from_micros(12_345))), "12.3");
        assert_eq!(ms(None), "-");
    }
}

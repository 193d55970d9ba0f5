//! The one percentile statistic of weir's benchmarks (`cargo xtask bench`,
//! `weir-dev bench-*`), so a p99 in one table is the same statistic as a
//! p99 in another.
//!
//! Plain `core` code behind the `stats` feature: user-space tools only, never
//! built for the kernel programs.

use core::time::Duration;

/// Nearest-rank percentile of samples sorted in ascending order: the
/// smallest sample with at least `p`% of the samples at or below it, that
/// is the sample of rank `ceil(p / 100 * n)` (1-based, at least 1).
///
/// p99 of 30 samples is therefore the largest one (with so few samples
/// nothing finer is honest), p50 of 30 the fifteenth, p0 the smallest and
/// p100 the largest. `None` for no samples or `p` outside `0..=100`.
/// The samples must already be sorted; they are not checked.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let exact = p / 100.0 * sorted.len() as f64;
    // ceil() without std: the cast truncates a non-negative value.
    let truncated = exact as usize;
    let rank = if (truncated as f64) < exact { truncated + 1 } else { truncated };
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis<const N: usize>(v: [u64; N]) -> [Duration; N] {
        v.map(Duration::from_millis)
    }

    #[test]
    fn nearest_rank_of_one_to_a_hundred() {
        let mut v = [Duration::ZERO; 100];
        for (i, d) in v.iter_mut().enumerate() {
            *d = Duration::from_millis(i as u64 + 1);
        }
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 99.5), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v, 0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn p99_of_thirty_is_the_maximum_and_p50_the_fifteenth() {
        let mut v = [Duration::ZERO; 30];
        for (i, d) in v.iter_mut().enumerate() {
            *d = Duration::from_millis(i as u64 + 1);
        }
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(30)));
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(15)));
    }

    #[test]
    fn few_samples_and_out_of_range() {
        assert_eq!(percentile(&[], 50.0), None);
        let one = millis([7]);
        assert_eq!(percentile(&one, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 101.0), None);
        assert_eq!(percentile(&one, -1.0), None);
        assert_eq!(percentile(&one, f64::NAN), None);
        let two = millis([1, 2]);
        assert_eq!(percentile(&two, 50.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&two, 50.1), Some(Duration::from_millis(2)));
    }
}

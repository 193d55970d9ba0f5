//! A Prometheus histogram with fixed bucket bounds, rendered in the text
//! exposition format (cumulative `_bucket` lines, `_sum`, `_count`).
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    /// `bounds`: the buckets' upper bounds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, buckets: vec![0; bounds.len() + 1], count: 0, sum: 0.0 }
    }

    pub fn observe(&mut self, value: f64) {
        let slot = self.bounds.iter().position(|&le| value <= le).unwrap_or(self.bounds.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum += value;
    }

    /// The samples of `name` with `labels` (`a="x",b="y"`, or empty); the
    /// caller writes HELP and TYPE once per family.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = |l: &str| if l.is_empty() { String::new() } else { format!("{{{l}}}") };
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }

    /// Observations per bucket (not cumulative), +Inf last.
    #[cfg(test)]
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_sum_and_count() {
        let mut h = Histogram::new(&[0.5, 1.0]);
        for v in [0.1, 0.7, 0.7, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.buckets(), [1, 2, 1]);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "command=\"ADD\"");
        assert_eq!(
            out,
            "x_seconds_bucket{command=\"ADD\",le=\"0.5\"} 1\nx_seconds_bucket{command=\"ADD\",le=\"1\"} 3\n\
             x_seconds_bucket{command=\"ADD\",le=\"+Inf\"} 4\nx_seconds_sum{command=\"ADD\"} 4.5\nx_seconds_count{command=\"ADD\"} 4\n"
        );
        let mut out = String::new();
        Histogram::new(&[1.0]).render(&mut out, "y", "");
        assert_eq!(out, "y_bucket{le=\"1\"} 0\ny_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n");
    }
}

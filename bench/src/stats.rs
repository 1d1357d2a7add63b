//! Summaries of repeated measurements: the median (the mean of the two middle values for an even
//! count), the minimum and the maximum, with the values themselves kept for the JSON report.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    /// In the order measured.
    pub values: Vec<f64>,
}

impl Stats {
    /// None for no values (a phase that was skipped).
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Stats { median, min: sorted[0], max: sorted[n - 1], n, values: values.to_vec() })
    }

    /// A single figure that was measured once over several runs (e.g. CPU time of a whole phase).
    pub fn single(value: f64) -> Stats {
        Stats { median: value, min: value, max: value, n: 1, values: vec![value] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0, 5.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 10.0, 5));
        assert_eq!(s.values, vec![3.0, 1.0, 2.0, 10.0, 5.0], "values stay in measured order");
        let even = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(Stats::of(&[7.0]).unwrap().median, 7.0);
        assert_eq!(Stats::of(&[]), None);
    }
}

//! Latency histograms: how the benchmark records the wall time of each request, the percentile
//! summary it reports, and the `.hgrm` percentile distribution file that HdrHistogram's plotting
//! tools read. Latencies are recorded in microseconds; the `.hgrm` file is in milliseconds, as
//! HdrHistogram's own tools write it for microsecond data (`outputValueUnitScalingRatio` 1000).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{self, Write};
use std::time::Duration;

/// The smallest latency told apart from zero: 1 µs.
pub const LOWEST_LATENCY_US: u64 = 1;
/// The largest latency recorded exactly: one hour. A slower request is counted as one hour
/// rather than dropped, so the count of a histogram is always the count of requests.
pub const HIGHEST_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits kept, so every recorded value is within 0.1% of the truth.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Rows of a `.hgrm` file: quantile steps per halving of the distance to 100%, the default of
/// HdrHistogram's `outputPercentileDistribution`.
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// `.hgrm` values are written in milliseconds; the histogram counts microseconds.
pub const US_PER_MS: f64 = 1000.0;

/// An empty latency histogram, 1 µs to 1 hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_LATENCY_US, HIGHEST_LATENCY_US, SIGNIFICANT_DIGITS)
        .expect("the latency histogram's bounds are valid constants")
}

/// Counts one request that took `latency`.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(latency_us);
}

/// The percentiles the benchmark reports, in microseconds. Serialized as the `latency_us`
/// object of the JSON report.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    /// Each percentile is the highest value equivalent to the recorded one, as HdrHistogram
    /// reports it, so it is never below the true value.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// Writes the percentile distribution in HdrHistogram's `.hgrm` text format, row for row as
/// the Java `outputPercentileDistribution` prints it: a header, then one row per quantile step
/// (value in ms, quantile, cumulative count, 1/(1-quantile)), the last row (quantile 1) without
/// the infinite last column, then the mean, standard deviation, maximum and layout footer.
pub fn write_hgrm(w: &mut dyn Write, histogram: &Histogram<u64>) -> io::Result<()> {
    writeln!(w, "{:>12} {:>14} {:>10} {:>14}", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    writeln!(w)?;
    let mut total_count = 0u64;
    for step in histogram.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
        total_count += step.count_since_last_iteration();
        let value_ms = step.value_iterated_to() as f64 / US_PER_MS;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let inverse = 1.0 / (1.0 - quantile);
            writeln!(w, "{value_ms:12.3} {quantile:2.12} {total_count:10} {inverse:14.2}")?;
        } else {
            writeln!(w, "{value_ms:12.3} {quantile:2.12} {total_count:10}")?;
        }
    }
    let mean_ms = histogram.mean() / US_PER_MS;
    let stdev_ms = histogram.stdev() / US_PER_MS;
    let max_ms = histogram.max() as f64 / US_PER_MS;
    writeln!(w, "#[Mean    = {mean_ms:12.3}, StdDeviation   = {stdev_ms:12.3}]")?;
    writeln!(w, "#[Max     = {max_ms:12.3}, Total count    = {:12}]", histogram.len())?;
    writeln!(w, "#[Buckets = {:12}, SubBuckets     = {:12}]", histogram.buckets(), sub_bucket_count(histogram))
}

/// The histogram's sub-bucket count, which the crate does not expose: the smallest power of two
/// that holds 2·10^digits, the same formula HdrHistogram uses to size it.
fn sub_bucket_count(histogram: &Histogram<u64>) -> u64 {
    let largest_exact = 2 * 10u64.pow(u32::from(histogram.sigfig()));
    largest_exact.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values_us: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = new_histogram();
        for value_us in values_us {
            record(&mut histogram, Duration::from_micros(value_us));
        }
        histogram
    }

    #[test]
    fn hgrm_of_a_known_histogram() {
        // 1, 2, ... 10 ms: values below 2048 µs are exact, above they are rounded up to the
        // end of their 2 µs (then 4 µs, 8 µs) wide bucket. The quantile steps are summed in
        // floating point, so step 0.3 is a hair above 3/10 and lands on the fourth value.
        let histogram = histogram_of((1..=10).map(|ms| ms * 1000));
        let mut out = Vec::new();
        write_hgrm(&mut out, &histogram).expect("write to memory");
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)

       1.000 0.000000000000          1           1.00
       1.000 0.100000000000          1           1.11
       2.000 0.200000000000          2           1.25
       4.001 0.300000000000          4           1.43
       4.001 0.400000000000          4           1.67
       5.003 0.500000000000          5           2.00
       6.003 0.550000000000          6           2.22
       7.003 0.600000000000          7           2.50
       7.003 0.650000000000          7           2.86
       8.003 0.700000000000          8           3.33
       8.003 0.750000000000          8           4.00
       8.003 0.775000000000          8           4.44
       9.007 0.800000000000          9           5.00
       9.007 0.825000000000          9           5.71
       9.007 0.850000000000          9           6.67
       9.007 0.875000000000          9           8.00
       9.007 0.887500000000          9           8.89
      10.007 0.900000000000         10          10.00
      10.007 1.000000000000         10
#[Mean    =        5.502, StdDeviation   =        2.874]
#[Max     =       10.007, Total count    =           10]
#[Buckets =           22, SubBuckets     =         2048]
";
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }

    #[test]
    fn summary_reports_highest_equivalent_values() {
        let histogram = histogram_of((1..=1000).map(|us| us * 10));
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.p50, 5003);
        assert_eq!(summary.p90, 9007);
        assert_eq!(summary.p99, 9903);
        assert_eq!(summary.p999, 9991);
        assert_eq!(summary.max, 10007);
        assert!((summary.mean - 5005.0).abs() < 5.0, "mean {}", summary.mean);
    }

    #[test]
    fn latencies_outside_the_range_are_clamped_not_dropped() {
        let mut histogram = new_histogram();
        record(&mut histogram, Duration::from_nanos(10));
        record(&mut histogram, Duration::from_secs(2 * 3600));
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 0);
        assert!(histogram.max() >= HIGHEST_LATENCY_US);
    }
}

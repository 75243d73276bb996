//! Latency histograms and their summaries in milliseconds.
//!
//! Owns how rtpvisor records a latency sample (round trip of a probe, delay of a packet against
//! its stream's schedule) and how a set of samples is summarised for the API and metrics. No IO
//! here. The histogram is an HdrHistogram with fixed bounds, allocated once in
//! [`LatencyHistogram::new`]; recording only increments a counter in place, so it can sit on the
//! per-packet path.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Lowest value the histogram tells apart from its neighbours: 1 us.
pub const LOWEST_US: u64 = 1;
/// Highest value the histogram tracks: 60 s. Larger samples are recorded as 60 s: a round trip
/// that long is a dead call, and its exact size no longer matters.
pub const HIGHEST_US: u64 = 60_000_000;
/// Significant decimal digits kept: values within 0.1 % share a bucket.
pub const SIGFIG: u8 = 3;
/// A call's own histogram ([`LatencyHistogram::per_call`]) is coarser and shorter: one per
/// live call must stay small (about 18 KiB instead of 150 KiB). 1 % resolution, up to 10 s.
pub const PER_CALL_HIGHEST_US: u64 = 10_000_000;
pub const PER_CALL_SIGFIG: u8 = 2;

/// Upper bounds, in microseconds, of the Prometheus histogram buckets (`le`) the service-wide
/// latency is exported with: 50 us .. 2 s, dense where RTP lives (a loopback round trip is
/// tens of microseconds, a packet is late after 20 ms, a call is in trouble beyond 200 ms).
/// Fixed, so that every instance exports the same buckets and PromQL can sum them across a
/// cluster. Samples above the last bound count in the implicit `+Inf` bucket only.
pub const BUCKET_BOUNDS_US: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 40_000, 60_000, 80_000, 100_000,
    150_000, 200_000, 300_000, 500_000, 1_000_000, 2_000_000,
];

/// Cumulative sample counts at or below each of [`BUCKET_BOUNDS_US`] (Prometheus `_bucket`).
pub type BucketCounts = [u64; BUCKET_BOUNDS_US.len()];

/// Latency histogram in microseconds (HdrHistogram, 1 us .. 60 s, 3 significant digits),
/// pre-allocated: record never allocates.
#[derive(Clone)]
pub struct LatencyHistogram {
    /// Built with `new_with_bounds`, which leaves auto-resize off: a sample above the bound is
    /// clamped by `saturating_record` instead of growing the counts array, so every histogram
    /// has the same layout (merges never fail) and recording never reallocates.
    hist: Histogram<u64>,
    /// The bound samples are clamped to (this histogram's highest trackable value).
    highest_us: u64,
}

/// Summary of a [`LatencyHistogram`] in milliseconds; all 0.0 when `count == 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample (at most 60 000 ms, the bound).
    pub max_ms: f64,
    /// Mean.
    pub avg_ms: f64,
}

impl LatencyHistogram {
    /// An empty histogram with the fixed bounds above. Allocates its counts (about 150 KiB)
    /// once, here.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
            .expect("constant bounds are valid: low >= 1, high >= 2 * low, sigfig <= 5");
        debug_assert!(!hist.is_auto_resize());
        LatencyHistogram { hist, highest_us: HIGHEST_US }
    }

    /// A call's own histogram: 1 us .. 10 s at 2 significant digits (about 18 KiB). Never
    /// merged with the service-wide ones (their layouts differ): the media engine records each
    /// sample into both.
    pub fn per_call() -> Self {
        let hist = Histogram::new_with_bounds(LOWEST_US, PER_CALL_HIGHEST_US, PER_CALL_SIGFIG)
            .expect("constant bounds are valid: low >= 1, high >= 2 * low, sigfig <= 5");
        LatencyHistogram { hist, highest_us: PER_CALL_HIGHEST_US }
    }

    /// Records one sample; 0 is allowed, anything above 60 s counts as 60 s. Never allocates.
    pub fn record(&mut self, d: Duration) {
        // u128 micros of a huge Duration do not fit u64; they are above the bound either way.
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Records one sample given in microseconds, clamped to [0, 60 s]. Never allocates.
    pub fn record_us(&mut self, us: u64) {
        // Clamp ourselves so the recorded value, and hence max(), is the bound itself; then the
        // library's saturating path cannot grow the histogram either.
        self.hist.saturating_record(us.min(self.highest_us));
    }

    /// Adds every sample of `other` to this histogram (e.g. one call's into the service's).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Both were built with the same constant bounds, so the counts arrays match and `add`
        // takes its element-wise path: it cannot fail and does not allocate.
        self.hist
            .add(&other.hist)
            .expect("histograms with identical bounds always add");
    }

    /// Forgets every sample, keeping the allocation.
    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at quantile `q` in microseconds: `q` is clamped to [0, 1] (NaN reads as 0);
    /// 0 when empty. Within 0.1 % of a recorded value, and never above the 60 s bound.
    pub fn value_at_quantile_us(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The library reports the top of the bucket; no sample above the bound was recorded,
        // so the bound is the honest answer for the last bucket.
        self.hist.value_at_quantile(q).min(self.highest_us)
    }

    /// Cumulative counts for Prometheus histogram buckets: element `i` is the number of samples
    /// at or below `bounds_us[i]` (which must be ascending). An HdrHistogram bucket counts as
    /// at or below a bound when its lowest equivalent value is: exact below 2048 us, within the
    /// histogram's 0.1 % resolution above. Samples above the last bound are in no element (the
    /// caller's `+Inf` bucket is [`count`](Self::count)). Walks the recorded buckets once.
    pub fn cumulative_counts<const N: usize>(&self, bounds_us: &[u64; N]) -> [u64; N] {
        debug_assert!(bounds_us.windows(2).all(|w| w[0] < w[1]), "bounds must ascend");
        let mut counts = [0u64; N];
        for v in self.hist.iter_recorded() {
            let low = self.hist.lowest_equivalent(v.value_iterated_to());
            if let Some(i) = bounds_us.iter().position(|&b| low <= b) {
                counts[i] += v.count_at_value();
            }
        }
        for i in 1..N {
            counts[i] += counts[i - 1];
        }
        counts
    }

    /// Count, min, percentiles, max and mean in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.count(),
            min_ms: ms(self.hist.min()),
            p50_ms: ms(self.value_at_quantile_us(0.50)),
            p95_ms: ms(self.value_at_quantile_us(0.95)),
            p99_ms: ms(self.value_at_quantile_us(0.99)),
            p999_ms: ms(self.value_at_quantile_us(0.999)),
            max_ms: ms(self.hist.max().min(self.highest_us)),
            avg_ms: self.hist.mean() / 1000.0,
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    /// The summary, not the ~19 000 counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LatencyHistogram")
            .field(&self.summary())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal within HdrHistogram's 3 significant digits.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() / 1000.0 + 1e-9
    }

    #[test]
    fn empty_summary_is_all_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.summary(), LatencySummary::default());
        assert_eq!(h.value_at_quantile_us(0.5), 0);
        assert_eq!(h.value_at_quantile_us(1.0), 0);
    }

    #[test]
    fn fixed_bounds_no_auto_resize() {
        let h = LatencyHistogram::default();
        assert!(!h.hist.is_auto_resize());
        assert_eq!(h.hist.low(), LOWEST_US);
        assert_eq!(h.hist.high(), HIGHEST_US);
        assert_eq!(h.hist.sigfig(), SIGFIG);
    }

    #[test]
    fn one_to_hundred_ms() {
        let mut h = LatencyHistogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.p50_ms, 50.0), "{s:?}");
        assert!(close(s.p95_ms, 95.0), "{s:?}");
        assert!(close(s.p99_ms, 99.0), "{s:?}");
        assert!(close(s.p999_ms, 100.0), "{s:?}");
        assert!(close(s.max_ms, 100.0), "{s:?}");
        assert!(close(s.avg_ms, 50.5), "{s:?}");
    }

    #[test]
    fn per_call_histograms_are_small_coarse_and_clamped_at_10_s() {
        let mut h = LatencyHistogram::per_call();
        assert!(!h.hist.is_auto_resize());
        assert!(h.hist.distinct_values() * 8 <= 20 * 1024, "{} counters", h.hist.distinct_values());
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert!((s.p50_ms - 50.0).abs() <= 0.5, "1 % resolution: {s:?}");
        h.record(Duration::from_secs(30));
        assert_eq!(h.value_at_quantile_us(1.0), PER_CALL_HIGHEST_US);
        assert_eq!(h.summary().max_ms, 10_000.0);
    }

    #[test]
    fn zero_is_recorded_as_zero() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::ZERO);
        h.record_us(0);
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert_eq!(s.min_ms, 0.0);
        assert_eq!(s.max_ms, 0.0);
        assert_eq!(s.avg_ms, 0.0);
    }

    #[test]
    fn sub_microsecond_truncates_to_zero() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_nanos(999));
        assert_eq!(h.value_at_quantile_us(1.0), 0);
    }

    #[test]
    fn saturates_at_the_top_bound() {
        let mut h = LatencyHistogram::new();
        let len_before = h.hist.distinct_values();
        h.record(Duration::from_secs(3600));
        h.record(Duration::MAX);
        h.record_us(u64::MAX);
        h.record_us(HIGHEST_US + 1);
        assert_eq!(h.count(), 4);
        assert_eq!(
            h.hist.distinct_values(),
            len_before,
            "counts array did not grow"
        );
        // Quantile 0 reports the bottom of the top bucket: within the 3 significant digits.
        assert!(close(h.value_at_quantile_us(0.0) as f64, HIGHEST_US as f64));
        assert_eq!(h.value_at_quantile_us(1.0), HIGHEST_US);
        let s = h.summary();
        assert_eq!(s.max_ms, 60_000.0);
        assert_eq!(s.p50_ms, 60_000.0);
        assert!(close(s.min_ms, 60_000.0), "{s:?}");
    }

    #[test]
    fn exactly_the_bound_is_kept() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_secs(60));
        assert_eq!(h.value_at_quantile_us(1.0), HIGHEST_US);
    }

    #[test]
    fn quantile_is_clamped() {
        let mut h = LatencyHistogram::new();
        h.record_us(10);
        h.record_us(1000);
        assert_eq!(h.value_at_quantile_us(-1.0), 10);
        assert_eq!(h.value_at_quantile_us(f64::NAN), 10);
        assert_eq!(h.value_at_quantile_us(0.0), 10);
        assert_eq!(h.value_at_quantile_us(2.0), 1000);
        assert_eq!(h.value_at_quantile_us(f64::INFINITY), 1000);
    }

    #[test]
    fn merge_adds_samples() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record_us(1_000);
        b.record_us(3_000);
        b.record_us(HIGHEST_US * 2);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(b.count(), 2, "other is untouched");
        let s = a.summary();
        assert!(close(s.min_ms, 1.0));
        assert_eq!(s.max_ms, 60_000.0);
        // Merging into an empty one, and merging an empty one.
        let mut c = LatencyHistogram::new();
        c.merge(&a);
        c.merge(&LatencyHistogram::new());
        assert_eq!(c.summary(), a.summary());
    }

    #[test]
    fn reset_forgets_and_can_record_again() {
        let mut h = LatencyHistogram::new();
        h.record_us(5_000);
        h.reset();
        assert_eq!(h.count(), 0);
        assert_eq!(h.summary(), LatencySummary::default());
        h.record_us(7_000);
        assert!(close(h.summary().max_ms, 7.0));
        assert!(close(h.summary().min_ms, 7.0));
    }

    #[test]
    fn clone_is_independent() {
        let mut a = LatencyHistogram::new();
        a.record_us(1);
        let b = a.clone();
        a.record_us(2);
        assert_eq!(a.count(), 2);
        assert_eq!(b.count(), 1);
    }

    #[test]
    fn cumulative_counts_of_an_empty_histogram_are_zero() {
        assert_eq!(LatencyHistogram::new().cumulative_counts(&BUCKET_BOUNDS_US), [0; 19]);
    }

    #[test]
    fn cumulative_counts_put_each_sample_in_its_bucket_and_above() {
        let mut h = LatencyHistogram::new();
        // On a bound (counts in it), just above one (the next), between, beyond the last (+Inf only).
        for us in [0, 50, 51, 100, 1_000, 1_001, 19_999, 20_000, 2_000_000, 2_100_000, 70_000_000] {
            h.record_us(us);
        }
        let c = h.cumulative_counts(&BUCKET_BOUNDS_US);
        let at = |bound: u64| c[BUCKET_BOUNDS_US.iter().position(|&b| b == bound).unwrap()];
        assert_eq!(at(50), 2, "0 and 50 us: {c:?}");
        assert_eq!(at(100), 4, "51 and 100 us: {c:?}");
        assert_eq!(at(500), 4);
        assert_eq!(at(1_000), 5);
        assert_eq!(at(2_500), 6, "1001 us: {c:?}");
        assert_eq!(at(10_000), 6);
        assert_eq!(at(20_000), 8, "19.999 and 20 ms: {c:?}");
        assert_eq!(at(1_000_000), 8);
        assert_eq!(at(2_000_000), 9, "2 s: {c:?}");
        assert_eq!(h.count(), 11, "2.1 s and the clamped 60 s are in +Inf only");
        assert!(c.windows(2).all(|w| w[0] <= w[1]), "cumulative: {c:?}");
    }

    #[test]
    fn cumulative_counts_agree_with_quantiles_within_the_resolution() {
        // 1..=10 000 us, one sample each: the count at or below a bound is the bound itself,
        // within 0.1 % above 2048 us (HdrHistogram's 3 significant digits).
        let mut h = LatencyHistogram::new();
        for us in 1..=10_000 {
            h.record_us(us);
        }
        let c = h.cumulative_counts(&[50, 1_000, 2_500, 5_000, 10_000]);
        assert_eq!(&c[..2], &[50, 1_000]);
        for (got, want) in c[2..].iter().zip([2_500u64, 5_000, 10_000]) {
            assert!(got.abs_diff(want) <= want / 1000, "{got} vs {want}");
        }
        assert_eq!(c[4], 10_000);
    }

    #[test]
    fn debug_shows_summary() {
        let mut h = LatencyHistogram::new();
        h.record_us(2_000);
        let s = format!("{h:?}");
        assert!(
            s.starts_with("LatencyHistogram(LatencySummary { count: 1"),
            "{s}"
        );
    }
}

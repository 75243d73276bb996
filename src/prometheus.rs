//! Prometheus text exposition (format 0.0.4) of the service metrics. Pure: a snapshot in, text
//! out. No per-call labels: cardinality stays bounded whatever the call volume.

use std::fmt::Write;

use rtpvisor_actors::actors::metrics::{MetricsSnapshot, ModeMetrics};
use rtpvisor_actors::actors::service::ActorNode;
use rtpvisor_actors::latency::BUCKET_BOUNDS_US;
use rtpvisor_actors::ports::PoolSnapshot;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Restart and failure counts of the supervision tree's long-lived nodes (the call actors
/// are summed into their supervisor's `child_failures`: no per-call series).
pub fn render_actors(root: &ActorNode) -> String {
    let mut o = String::with_capacity(512);
    family(&mut o, "rtpvisor_actor_restarts_total", "counter", "Restarts of long-lived actors (the ARI connection: reconnects).");
    let mut nodes = vec![root];
    let mut failures = Vec::new();
    while let Some(n) = nodes.pop() {
        if n.kind != "ChannelActor" {
            sample(&mut o, "rtpvisor_actor_restarts_total", &format!("actor=\"{}\"", n.name), n.restarts as f64);
            if n.kind == "Supervisor" {
                failures.push(n.child_failures);
            }
        }
        nodes.extend(n.children.iter().rev());
    }
    family(&mut o, "rtpvisor_channel_actor_failures_total", "counter", "Call actors that died (panic); their calls were ended cleanly.");
    sample(&mut o, "rtpvisor_channel_actor_failures_total", "", failures.iter().sum::<u64>() as f64);
    let echo = root.children.iter().find(|n| n.kind == "EchoActor");
    let workers = echo.map_or(&[][..], |e| &e.children[..]);
    family(&mut o, "rtpvisor_echo_workers", "gauge", "Shared echo worker threads, by state (running, or not: dead or stalled until restarted).");
    let running = workers.iter().filter(|w| w.state == "running").count();
    sample(&mut o, "rtpvisor_echo_workers", "state=\"running\"", running as f64);
    sample(&mut o, "rtpvisor_echo_workers", "state=\"failed\"", (workers.len() - running) as f64);
    o
}

/// Renders every figure of `GET /metrics` and the pool counts.
pub fn render(m: &MetricsSnapshot, ports: &PoolSnapshot) -> String {
    let mut o = String::with_capacity(4096);
    let modes: [(&str, &ModeMetrics); 3] =
        [("echo", &m.modes.echo), ("probe", &m.modes.probe), ("shared-echo", &m.modes.shared_echo)];

    family(&mut o, "rtpvisor_calls_total", "counter", "Calls accepted, by mode.");
    for (name, mm) in modes {
        sample(&mut o, "rtpvisor_calls_total", &format!("mode=\"{name}\""), mm.calls_total as f64);
    }
    family(&mut o, "rtpvisor_calls_active", "gauge", "Calls live now, by mode.");
    for (name, mm) in modes {
        sample(&mut o, "rtpvisor_calls_active", &format!("mode=\"{name}\""), mm.calls_active as f64);
    }
    family(&mut o, "rtpvisor_calls_rejected_total", "counter", "Calls refused (no free port, shutting down, bad mode).");
    for (name, mm) in modes {
        sample(&mut o, "rtpvisor_calls_rejected_total", &format!("mode=\"{name}\""), mm.calls_rejected as f64);
    }
    family(&mut o, "rtpvisor_calls_failed_total", "counter", "Calls whose setup failed part way (torn down).");
    for (name, mm) in modes {
        sample(&mut o, "rtpvisor_calls_failed_total", &format!("mode=\"{name}\""), mm.calls_failed as f64);
    }

    family(&mut o, "rtpvisor_calls_adopted_total", "counter", "Calls taken over from Asterisk after a restart (also in rtpvisor_calls_total), by mode.");
    for (name, mm) in modes {
        sample(&mut o, "rtpvisor_calls_adopted_total", &format!("mode=\"{name}\""), mm.calls_adopted as f64);
    }

    family(&mut o, "rtpvisor_calls_ended_total", "counter", "Calls ended, by reason.");
    for (reason, n) in m.ended.pairs() {
        sample(&mut o, "rtpvisor_calls_ended_total", &format!("reason=\"{reason}\""), n as f64);
    }

    // A histogram with fixed buckets (BUCKET_BOUNDS_US), so PromQL can add up the instances of
    // a cluster: histogram_quantile(0.99, sum by (le) (rate(rtpvisor_latency_seconds_bucket[1m]))).
    family(
        &mut o,
        "rtpvisor_latency_seconds",
        "histogram",
        "Per-packet latency: echo mode delay against the stream's schedule, probe mode round-trip time.",
    );
    for (name, mm) in modes.iter().take(2) {
        for (bound_us, n) in BUCKET_BOUNDS_US.iter().zip(mm.latency_buckets) {
            let le = *bound_us as f64 / 1e6;
            sample(&mut o, "rtpvisor_latency_seconds_bucket", &format!("mode=\"{name}\",le=\"{le}\""), n as f64);
        }
        let count = mm.latency.count as f64;
        sample(&mut o, "rtpvisor_latency_seconds_bucket", &format!("mode=\"{name}\",le=\"+Inf\""), count);
        sample(&mut o, "rtpvisor_latency_seconds_sum", &format!("mode=\"{name}\""), mm.latency.avg_ms * count / 1000.0);
        sample(&mut o, "rtpvisor_latency_seconds_count", &format!("mode=\"{name}\""), count);
    }
    // The instance's own quantiles from its HdrHistogram (3 significant digits): exact for one
    // instance, but quantiles cannot be added up across instances (use the histogram for that).
    family(
        &mut o,
        "rtpvisor_latency_summary_seconds",
        "summary",
        "Per-packet latency quantiles of this instance (same samples as rtpvisor_latency_seconds).",
    );
    for (name, mm) in modes.iter().take(2) {
        for (q, v) in [("0.5", mm.latency.p50_ms), ("0.95", mm.latency.p95_ms), ("0.99", mm.latency.p99_ms), ("0.999", mm.latency.p999_ms)] {
            sample(&mut o, "rtpvisor_latency_summary_seconds", &format!("mode=\"{name}\",quantile=\"{q}\""), v / 1000.0);
        }
        let count = mm.latency.count as f64;
        sample(&mut o, "rtpvisor_latency_summary_seconds_sum", &format!("mode=\"{name}\""), mm.latency.avg_ms * count / 1000.0);
        sample(&mut o, "rtpvisor_latency_summary_seconds_count", &format!("mode=\"{name}\""), count);
    }
    family(&mut o, "rtpvisor_latency_max_seconds", "gauge", "Largest latency sample so far.");
    for (name, mm) in modes.iter().take(2) {
        sample(&mut o, "rtpvisor_latency_max_seconds", &format!("mode=\"{name}\""), mm.latency.max_ms / 1000.0);
    }

    type Counter = (&'static str, &'static str, fn(&ModeMetrics) -> u64);
    let counters: [Counter; 7] = [
        ("rtpvisor_packets_received_total", "RTP packets received from Asterisk on call ports.", |x| x.packets_in),
        ("rtpvisor_packets_sent_total", "RTP packets sent to Asterisk from call ports.", |x| x.packets_out),
        ("rtpvisor_packets_expected_total", "Packets expected: echo from sequence numbers, probe those sent and no longer in flight.", |x| x.expected),
        ("rtpvisor_packets_lost_total", "Packets lost: echo from sequence gaps, probe not back within the timeout.", |x| x.lost),
        ("rtpvisor_packets_late_total", "Packets whose latency exceeded the late threshold.", |x| x.late),
        ("rtpvisor_packets_duplicate_total", "Duplicate packets.", |x| x.duplicates),
        ("rtpvisor_packets_reordered_total", "Packets that arrived after a later one (echo mode).", |x| x.reordered),
    ];
    for (name, help, f) in counters {
        family(&mut o, name, "counter", help);
        for (mode, mm) in modes.iter().take(2) {
            sample(&mut o, name, &format!("mode=\"{mode}\""), f(mm) as f64);
        }
    }
    family(&mut o, "rtpvisor_jitter_seconds_avg", "gauge", "Mean RFC 3550 interarrival jitter over echo-mode calls.");
    sample(&mut o, "rtpvisor_jitter_seconds_avg", "", m.jitter_ms_avg / 1000.0);
    family(&mut o, "rtpvisor_media_loops_detected_total", "counter", "Echo-mode calls whose far end echoes too (media loop).");
    sample(&mut o, "rtpvisor_media_loops_detected_total", "", m.modes.echo.loops_detected as f64);
    // Every series is always there (stable series); 0 says "nothing measured yet", since a MOS
    // is never below 1.
    family(&mut o, "rtpvisor_mos_avg", "gauge", "MOS (G.107 E-model for G.711) of the mode's figures; 0 until measured.");
    for (mode, mm) in modes.iter().take(2) {
        sample(&mut o, "rtpvisor_mos_avg", &format!("mode=\"{mode}\""), mm.mos_avg.unwrap_or(0.0));
    }

    family(&mut o, "rtpvisor_dropped_packets_total", "counter", "Datagrams on call ports not processed, by reason.");
    sample(&mut o, "rtpvisor_dropped_packets_total", "reason=\"foreign_source\"", m.dropped.foreign_source as f64);
    sample(&mut o, "rtpvisor_dropped_packets_total", "reason=\"malformed\"", m.dropped.malformed as f64);
    sample(&mut o, "rtpvisor_dropped_packets_total", "reason=\"media_loop\"", m.dropped.media_loop as f64);

    family(&mut o, "rtpvisor_echo_packets_total", "counter", "Datagrams reflected by the shared echo (UDP 4000).");
    sample(&mut o, "rtpvisor_echo_packets_total", "", m.echo.packets as f64);
    family(&mut o, "rtpvisor_echo_bytes_total", "counter", "Bytes reflected by the shared echo.");
    sample(&mut o, "rtpvisor_echo_bytes_total", "", m.echo.bytes as f64);
    family(&mut o, "rtpvisor_echo_send_errors_total", "counter", "Shared echo send or receive errors.");
    sample(&mut o, "rtpvisor_echo_send_errors_total", "", m.echo.send_errors as f64);
    family(&mut o, "rtpvisor_echo_dropped_total", "counter", "Datagrams the shared echo did not answer, by reason (echo.allow, echo.rate_pps, echo.max_bytes).");
    sample(&mut o, "rtpvisor_echo_dropped_total", "reason=\"not_allowed\"", m.echo.dropped.not_allowed as f64);
    sample(&mut o, "rtpvisor_echo_dropped_total", "reason=\"rate_limited\"", m.echo.dropped.rate_limited as f64);
    sample(&mut o, "rtpvisor_echo_dropped_total", "reason=\"too_large\"", m.echo.dropped.too_large as f64);

    family(&mut o, "rtpvisor_media_commands_refused_total", "counter", "Commands the media engine's full queue refused (new calls' streams and watches; the calls failed cleanly).");
    sample(&mut o, "rtpvisor_media_commands_refused_total", "", m.media_engine.commands_refused as f64);
    family(&mut o, "rtpvisor_media_requests_abandoned_total", "counter", "Media engine requests whose asker had timed out before the engine got to them (not computed).");
    sample(&mut o, "rtpvisor_media_requests_abandoned_total", "", m.media_engine.requests_abandoned as f64);

    family(&mut o, "rtpvisor_ari_events_total", "counter", "ARI events received, by outcome.");
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"handled\"", m.ari.events.saturating_sub(m.ari.unknown + m.ari.malformed) as f64);
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"unknown_type\"", m.ari.unknown as f64);
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"malformed\"", m.ari.malformed as f64);

    family(&mut o, "rtpvisor_reconcile_runs_total", "counter", "Reconciliations with Asterisk (at every ARI connect and reconnect, after a failed setup, and every 60 s).");
    sample(&mut o, "rtpvisor_reconcile_runs_total", "", m.reconcile.runs as f64);
    family(&mut o, "rtpvisor_reconcile_orphans_cleaned_total", "counter", "Orphan channels and bridges ended by reconciliation.");
    sample(&mut o, "rtpvisor_reconcile_orphans_cleaned_total", "", m.reconcile.orphans_cleaned as f64);
    family(&mut o, "rtpvisor_reconcile_vanished_calls_total", "counter", "Live calls ended by reconciliation because their caller had vanished.");
    sample(&mut o, "rtpvisor_reconcile_vanished_calls_total", "", m.reconcile.vanished_calls as f64);
    family(&mut o, "rtpvisor_reconcile_adopted_calls_total", "counter", "Live calls found whole in Asterisk after a restart and taken over by reconciliation.");
    sample(&mut o, "rtpvisor_reconcile_adopted_calls_total", "", m.reconcile.adopted_calls as f64);
    family(&mut o, "rtpvisor_reconcile_failed_total", "counter", "Reconciliations that could not read Asterisk's state.");
    sample(&mut o, "rtpvisor_reconcile_failed_total", "", m.reconcile.failed as f64);

    family(&mut o, "rtpvisor_ports", "gauge", "RTP ports of the pool, by state.");
    for (state, n) in [
        ("leased", ports.leased),
        ("free", ports.free),
        ("quarantined", ports.quarantined),
        ("unavailable", ports.unavailable),
    ] {
        sample(&mut o, "rtpvisor_ports", &format!("state=\"{state}\""), n as f64);
    }
    family(&mut o, "rtpvisor_port_leases_total", "counter", "Port leases granted.");
    sample(&mut o, "rtpvisor_port_leases_total", "", ports.leases_total as f64);
    family(&mut o, "rtpvisor_port_exhausted_total", "counter", "Lease requests refused because no port was free.");
    sample(&mut o, "rtpvisor_port_exhausted_total", "", ports.exhausted_total as f64);
    o
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeSet, HashMap, HashSet};

    use rtpvisor_actors::actors::metrics::{AriEventCounts, DroppedCounters, EndedCounters, ModesMetrics};
    use rtpvisor_actors::latency::LatencySummary;
    use rtpvisor_actors::media::EngineCounters;
    use rtpvisor_actors::echo_guard::EchoDrops;
    use rtpvisor_actors::shared_echo::ReflectorCounters;
    use rtpvisor_actors::ports::PortRange;

    use super::*;

    /// One sample line of an exposition.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Sample {
        pub name: String,
        /// Label pairs in the order written.
        pub labels: Vec<(String, String)>,
        pub value: f64,
    }

    /// The label names any rtpvisor metric may carry. Each has a small fixed set of values;
    /// a label naming a call, channel or stream would make cardinality grow with traffic.
    const BOUNDED_LABELS: [&str; 7] = ["mode", "quantile", "le", "reason", "outcome", "state", "actor"];

    /// Returns `Err(message)` from the enclosing function unless `cond` holds.
    macro_rules! ensure {
        ($cond:expr, $($msg:tt)+) => {{
            let holds: bool = $cond;
            if !holds {
                return Err(format!($($msg)+));
            }
        }};
    }

    fn is_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !s.starts_with("__")
    }

    /// Parses `k="v",k2="v2"` (the text between the braces), honouring `\\`, `\"` and `\n`.
    fn parse_labels(text: &str, line: &str) -> Result<Vec<(String, String)>, String> {
        let mut labels = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some((name, after)) = rest.split_once("=\"") else {
                return Err(format!("label without =\"value\": {line:?}"));
            };
            ensure!(is_label_name(name), "bad label name {name:?}: {line:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}: {line:?}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value: {line:?}")),
                }
            };
            labels.push((name.to_owned(), value));
            rest = &after[end + 1..];
            match rest.strip_prefix(',') {
                Some(r) => rest = r,
                None => ensure!(rest.is_empty(), "junk after a label value: {line:?}"),
            }
        }
        Ok(labels)
    }

    /// Parses `name{labels} value` or `name value` (no timestamp: we never write one).
    fn parse_sample(line: &str) -> Result<Sample, String> {
        let Some((series, value)) = line.rsplit_once(' ') else {
            return Err(format!("sample without a value: {line:?}"));
        };
        let Ok(value) = value.parse::<f64>() else {
            return Err(format!("value is not a float: {line:?}"));
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let Some(labels) = labels.strip_suffix('}') else {
                    return Err(format!("unclosed label set: {line:?}"));
                };
                (name, parse_labels(labels, line)?)
            }
            None => (series, Vec::new()),
        };
        ensure!(is_metric_name(name), "bad metric name {name:?}: {line:?}");
        Ok(Sample { name: name.to_owned(), labels, value })
    }

    /// Checks `text` against the Prometheus text format 0.0.4 and our own rules; returns the
    /// samples, or what is wrong and on which line.
    ///
    /// Format: every line is `# HELP`, `# TYPE` or a sample; each family has exactly one HELP
    /// and one TYPE, both before its samples, and its lines are contiguous; a sample belongs to
    /// the family announced last (a summary also owns `_sum` and `_count`, a histogram only
    /// `_bucket`, `_sum` and `_count`); values are floats; a histogram's buckets carry `le`,
    /// ascend in it, are cumulative and end with `+Inf` equal to `_count`;
    /// no (name, labels) pair appears twice; the text ends with a newline.
    /// Ours: only [`BOUNDED_LABELS`] (so no per-call label), counters end in `_total` and are
    /// never negative, and only a summary's quantile samples carry `quantile`.
    pub(crate) fn try_check_exposition(text: &str) -> Result<Vec<Sample>, String> {
        ensure!(text.ends_with('\n'), "the exposition does not end with a newline");
        let mut helped: HashSet<String> = HashSet::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut seen: HashSet<(String, BTreeSet<(String, String)>)> = HashSet::new();
        // Histogram checks, per series (name or family, labels but le): the last (le, count)
        // of its buckets, and its +Inf count.
        type SeriesKey = (String, Vec<(String, String)>);
        let mut buckets: HashMap<SeriesKey, (f64, f64)> = HashMap::new();
        let mut inf_buckets: HashMap<SeriesKey, f64> = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            ensure!(!line.trim().is_empty(), "blank line in the exposition");
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                let keyword = words.next().unwrap_or_default();
                let name = words.next().unwrap_or_default().to_owned();
                let rest = words.next().unwrap_or_default();
                if keyword != "HELP" && keyword != "TYPE" {
                    continue; // a free comment
                }
                ensure!(is_metric_name(&name), "bad family name: {line:?}");
                ensure!(!finished.contains(&name), "family {name} resumed after another: {line:?}");
                if current.as_deref() != Some(name.as_str()) {
                    if let Some(previous) = current.replace(name.clone()) {
                        finished.insert(previous);
                    }
                }
                if keyword == "HELP" {
                    ensure!(!rest.trim().is_empty(), "empty help text: {line:?}");
                    ensure!(!helped.contains(&name), "second HELP for {name}");
                    ensure!(!types.contains_key(&name), "HELP after TYPE for {name}");
                    helped.insert(name);
                } else {
                    ensure!(
                        ["counter", "gauge", "summary", "histogram", "untyped"].contains(&rest),
                        "unknown type: {line:?}"
                    );
                    ensure!(helped.contains(&name), "TYPE before HELP for {name}");
                    ensure!(!types.contains_key(&name), "second TYPE for {name}");
                    types.insert(name, rest.to_owned());
                }
                continue;
            }
            let sample = parse_sample(line)?;
            let Some(family) = current.clone() else {
                return Err(format!("sample before any HELP/TYPE: {line:?}"));
            };
            let Some(kind) = types.get(&family) else {
                return Err(format!("no TYPE for {family} before its sample: {line:?}"));
            };
            let is_summary_part = kind == "summary"
                && [format!("{family}_sum"), format!("{family}_count")].contains(&sample.name);
            let is_bucket = kind == "histogram" && sample.name == format!("{family}_bucket");
            let is_histogram_part = is_bucket
                || kind == "histogram"
                    && [format!("{family}_sum"), format!("{family}_count")].contains(&sample.name);
            ensure!(
                (sample.name == family && kind != "histogram") || is_summary_part || is_histogram_part,
                "sample outside its family {family}: {line:?}"
            );
            let has_quantile = sample.labels.iter().any(|(k, _)| k == "quantile");
            ensure!(
                has_quantile == (kind == "summary" && !is_summary_part),
                "quantile label missing or misplaced: {line:?}"
            );
            let le = sample.labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.clone());
            ensure!(le.is_some() == is_bucket, "le label missing or misplaced: {line:?}");
            if let Some(le) = &le {
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().unwrap_or(f64::NAN) };
                ensure!(!bound.is_nan(), "le is not a float: {line:?}");
                // Buckets of one series (same labels but le) ascend in le and are cumulative.
                let key: Vec<(String, String)> = sample.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
                if let Some((last_bound, last_count)) = buckets.get(&(sample.name.clone(), key.clone())) {
                    ensure!(bound > *last_bound, "buckets not in ascending le: {line:?}");
                    ensure!(sample.value >= *last_count, "bucket counts not cumulative: {line:?}");
                }
                buckets.insert((sample.name.clone(), key.clone()), (bound, sample.value));
                if bound.is_infinite() {
                    inf_buckets.insert((family.clone(), key), sample.value);
                }
            }
            if kind == "histogram" && sample.name == format!("{family}_count") {
                let key: Vec<(String, String)> = sample.labels.clone();
                ensure!(
                    inf_buckets.get(&(family.clone(), key)) == Some(&sample.value),
                    "histogram _count is not its +Inf bucket: {line:?}"
                );
            }
            if kind == "counter" {
                ensure!(family.ends_with("_total"), "counter {family} does not end in _total");
                ensure!(sample.value >= 0.0, "negative counter: {line:?}");
            }
            for (label, _) in &sample.labels {
                ensure!(
                    BOUNDED_LABELS.contains(&label.as_str()),
                    "unbounded label {label:?} (allowed: {BOUNDED_LABELS:?}): {line:?}"
                );
            }
            let labels: BTreeSet<(String, String)> = sample.labels.iter().cloned().collect();
            let names: HashSet<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            ensure!(names.len() == sample.labels.len(), "repeated label name: {line:?}");
            ensure!(seen.insert((sample.name.clone(), labels)), "duplicate series: {line:?}");
            samples.push(sample);
        }
        if let Some(name) = helped.iter().find(|name| !types.contains_key(*name)) {
            return Err(format!("family {name} has HELP but no TYPE"));
        }
        Ok(samples)
    }

    /// [`try_check_exposition`], panicking with the problem and the whole text.
    pub(crate) fn check_exposition(text: &str) -> Vec<Sample> {
        try_check_exposition(text).unwrap_or_else(|e| panic!("{e}\n--- exposition:\n{text}"))
    }

    /// A snapshot where every figure is distinct, so a mixed-up field shows.
    fn distinctive() -> (MetricsSnapshot, PoolSnapshot) {
        let mode = |base: u64, latency: LatencySummary| ModeMetrics {
            calls_total: base + 1,
            calls_active: base + 2,
            calls_rejected: base + 3,
            calls_failed: base + 4,
            calls_adopted: base + 5,
            latency,
            latency_buckets: [0; 19],
            packets_in: base + 10,
            packets_out: base + 11,
            expected: base + 12,
            lost: base + 13,
            late: base + 14,
            duplicates: base + 15,
            reordered: base + 16,
            packet_loss_ratio: 0.25,
            late_ratio: 0.5,
            jitter_ms_avg: 3.0,
            loops_detected: base + 17,
            mos_avg: None,
        };
        let echo_latency = LatencySummary {
            count: 40,
            min_ms: 1.0,
            p50_ms: 12.5,
            p95_ms: 20.0,
            p99_ms: 31.25,
            p999_ms: 40.0,
            max_ms: 45.5,
            avg_ms: 12.5,
        };
        let probe_latency = LatencySummary {
            count: 8,
            min_ms: 2.0,
            p50_ms: 4.0,
            p95_ms: 6.0,
            p99_ms: 7.0,
            p999_ms: 7.5,
            max_ms: 250.0,
            avg_ms: 5.0,
        };
        let mut probe = mode(200, probe_latency);
        probe.calls_total = 7;
        // Cumulative, ending at most at the count (40): the rest is above 2 s.
        probe.latency_buckets = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7];
        probe.mos_avg = Some(4.25);
        let mut echo = mode(100, echo_latency);
        echo.latency_buckets = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30, 31, 32, 33, 34, 35, 36, 38];
        let metrics = MetricsSnapshot {
            total_channels: 1000,
            active_channels: 1001,
            total_latencies: 48,
            p50_latency: 1.5,
            p95_latency: 2.5,
            p99_latency: 3.5,
            max_latency: 4.5,
            avg_latency: 5.5,
            late_ratio: 0.125,
            packet_loss_ratio: 0.0625,
            rejected_calls: 1002,
            failed_calls: 1003,
            jitter_ms_avg: 2.5,
            modes: ModesMetrics {
                echo,
                probe,
                shared_echo: mode(300, LatencySummary::default()),
            },
            echo: ReflectorCounters {
                packets: 500,
                bytes: 86_000,
                send_errors: 3,
                dropped: EchoDrops { not_allowed: 31, rate_limited: 32, too_large: 33 },
            },
            dropped: DroppedCounters { foreign_source: 21, malformed: 22, media_loop: 23 },
            ari: AriEventCounts { events: 90, unknown: 5, malformed: 2 },
            reconcile: Default::default(),
            ended: EndedCounters { no_media: 41, silent_while_link_down: 42, ..Default::default() },
            media_engine: EngineCounters { commands_refused: 51, requests_abandoned: 52 },
        };
        let ports = PoolSnapshot {
            range: PortRange::new(10000, 10009).unwrap(),
            size: 10,
            leased: 2,
            free: 5,
            quarantined: 1,
            unavailable: 2,
            leased_ports: vec![10000, 10001],
            quarantined_ports: vec![10002],
            unavailable_ports: vec![10003, 10004],
            leases_total: 77,
            releases_total: 75,
            exhausted_total: 4,
            skipped_total: 2,
        };
        (metrics, ports)
    }

    fn lines(text: &str) -> HashSet<&str> {
        text.lines().collect()
    }

    #[test]
    fn renders_distinctive_values_on_the_expected_lines() {
        let (m, p) = distinctive();
        let text = render(&m, &p);
        let have = lines(&text);
        for want in [
            "# HELP rtpvisor_calls_total Calls accepted, by mode.",
            "# TYPE rtpvisor_calls_total counter",
            "rtpvisor_calls_total{mode=\"echo\"} 101",
            "rtpvisor_calls_total{mode=\"probe\"} 7",
            "rtpvisor_calls_total{mode=\"shared-echo\"} 301",
            "rtpvisor_calls_active{mode=\"echo\"} 102",
            "rtpvisor_calls_rejected_total{mode=\"probe\"} 203",
            "rtpvisor_calls_failed_total{mode=\"shared-echo\"} 304",
            "rtpvisor_calls_ended_total{reason=\"no_media\"} 41",
            "rtpvisor_calls_ended_total{reason=\"silent_while_link_down\"} 42",
            // Latencies are kept in ms and exposed in seconds: a histogram with fixed buckets
            // (50 us .. 2 s, +Inf = the count) ...
            "# TYPE rtpvisor_latency_seconds histogram",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"0.00005\"} 1",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"0.0001\"} 2",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"0.02\"} 9",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"0.06\"} 20",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"1\"} 36",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"2\"} 38",
            "rtpvisor_latency_seconds_bucket{mode=\"echo\",le=\"+Inf\"} 40",
            "rtpvisor_latency_seconds_sum{mode=\"echo\"} 0.5",
            "rtpvisor_latency_seconds_count{mode=\"echo\"} 40",
            "rtpvisor_latency_seconds_bucket{mode=\"probe\",le=\"0.001\"} 1",
            "rtpvisor_latency_seconds_bucket{mode=\"probe\",le=\"+Inf\"} 8",
            "rtpvisor_latency_seconds_sum{mode=\"probe\"} 0.04",
            "rtpvisor_latency_seconds_count{mode=\"probe\"} 8",
            // ... and the instance's own quantiles as a summary under another name.
            "# TYPE rtpvisor_latency_summary_seconds summary",
            "rtpvisor_latency_summary_seconds{mode=\"echo\",quantile=\"0.5\"} 0.0125",
            "rtpvisor_latency_summary_seconds{mode=\"echo\",quantile=\"0.95\"} 0.02",
            "rtpvisor_latency_summary_seconds{mode=\"echo\",quantile=\"0.99\"} 0.03125",
            "rtpvisor_latency_summary_seconds{mode=\"echo\",quantile=\"0.999\"} 0.04",
            "rtpvisor_latency_summary_seconds_sum{mode=\"echo\"} 0.5",
            "rtpvisor_latency_summary_seconds_count{mode=\"echo\"} 40",
            "rtpvisor_latency_summary_seconds{mode=\"probe\",quantile=\"0.5\"} 0.004",
            "rtpvisor_latency_summary_seconds_sum{mode=\"probe\"} 0.04",
            "rtpvisor_latency_summary_seconds_count{mode=\"probe\"} 8",
            "rtpvisor_latency_max_seconds{mode=\"echo\"} 0.0455",
            "rtpvisor_latency_max_seconds{mode=\"probe\"} 0.25",
            "rtpvisor_packets_received_total{mode=\"echo\"} 110",
            "rtpvisor_packets_sent_total{mode=\"probe\"} 211",
            "rtpvisor_packets_expected_total{mode=\"echo\"} 112",
            "rtpvisor_packets_lost_total{mode=\"probe\"} 213",
            "rtpvisor_packets_late_total{mode=\"echo\"} 114",
            "rtpvisor_packets_duplicate_total{mode=\"probe\"} 215",
            "rtpvisor_packets_reordered_total{mode=\"echo\"} 116",
            // MOS per mode; 0 where nothing was measured (echo here).
            "# TYPE rtpvisor_mos_avg gauge",
            "rtpvisor_mos_avg{mode=\"probe\"} 4.25",
            "rtpvisor_mos_avg{mode=\"echo\"} 0",
            // The service-wide mean jitter, not a per-mode one.
            "rtpvisor_jitter_seconds_avg 0.0025",
            "rtpvisor_media_loops_detected_total 117",
            "rtpvisor_dropped_packets_total{reason=\"foreign_source\"} 21",
            "rtpvisor_dropped_packets_total{reason=\"malformed\"} 22",
            "rtpvisor_dropped_packets_total{reason=\"media_loop\"} 23",
            "rtpvisor_echo_packets_total 500",
            "rtpvisor_echo_bytes_total 86000",
            "rtpvisor_echo_send_errors_total 3",
            "rtpvisor_echo_dropped_total{reason=\"not_allowed\"} 31",
            "rtpvisor_echo_dropped_total{reason=\"rate_limited\"} 32",
            "rtpvisor_echo_dropped_total{reason=\"too_large\"} 33",
            // Handled = all events minus unknown and malformed ones.
            "rtpvisor_media_commands_refused_total 51",
            "rtpvisor_media_requests_abandoned_total 52",
            "rtpvisor_ari_events_total{outcome=\"handled\"} 83",
            "rtpvisor_ari_events_total{outcome=\"unknown_type\"} 5",
            "rtpvisor_ari_events_total{outcome=\"malformed\"} 2",
            "# TYPE rtpvisor_ports gauge",
            "rtpvisor_ports{state=\"leased\"} 2",
            "rtpvisor_ports{state=\"free\"} 5",
            "rtpvisor_ports{state=\"quarantined\"} 1",
            "rtpvisor_ports{state=\"unavailable\"} 2",
            "rtpvisor_port_leases_total 77",
            "rtpvisor_port_exhausted_total 4",
        ] {
            assert!(have.contains(want), "missing line {want:?} in\n{text}");
        }
        // Shared-echo calls have no per-packet figures of ours: no latency or packet series.
        for line in text.lines().filter(|l| l.contains("shared-echo")) {
            assert!(line.starts_with("rtpvisor_calls_"), "{line}");
        }
    }

    #[test]
    fn exposition_is_well_formed() {
        let (m, p) = distinctive();
        let samples = check_exposition(&render(&m, &p));
        assert!(samples.iter().all(|s| s.value.is_finite()));
        // The pool's states add up to its size.
        let ports: f64 = samples.iter().filter(|s| s.name == "rtpvisor_ports").map(|s| s.value).sum();
        assert_eq!(ports, p.size as f64);
        let zero = check_exposition(&render(&MetricsSnapshot::default(), &PoolSnapshot {
            range: PortRange::new(1, 1).unwrap(),
            size: 0,
            leased: 0,
            free: 0,
            quarantined: 0,
            unavailable: 0,
            leased_ports: Vec::new(),
            quarantined_ports: Vec::new(),
            unavailable_ports: Vec::new(),
            leases_total: 0,
            releases_total: 0,
            exhausted_total: 0,
            skipped_total: 0,
        }));
        assert!(zero.iter().all(|s| s.value == 0.0), "{zero:?}");
    }

    #[test]
    fn series_do_not_depend_on_the_figures() {
        // Bounded cardinality: the same series whatever the traffic, idle or busy.
        let series = |text: &str| -> BTreeSet<(String, Vec<(String, String)>)> {
            check_exposition(text).into_iter().map(|s| (s.name, s.labels)).collect()
        };
        let (m, p) = distinctive();
        let busy = series(&render(&m, &p));
        let mut idle_pool = p.clone();
        idle_pool.leased_ports.clear();
        idle_pool.quarantined_ports.clear();
        idle_pool.unavailable_ports.clear();
        let idle = series(&render(&MetricsSnapshot::default(), &idle_pool));
        assert_eq!(busy, idle);
    }

    #[test]
    fn the_checker_rejects_bad_expositions() {
        let head = "# HELP a_total A.\n# TYPE a_total counter\n";
        let good = format!("{head}a_total{{mode=\"echo\"}} 1\n");
        assert_eq!(check_exposition(&good).len(), 1);
        let cases: [(String, &str); 12] = [
            ("a_total 1\n".into(), "sample before any HELP/TYPE"),
            ("# HELP a_total A.\na_total 1\n".into(), "no TYPE for a_total"),
            ("# TYPE a_total counter\n# HELP a_total A.\n".into(), "TYPE before HELP"),
            (format!("{head}a_total one\n"), "not a float"),
            (format!("{head}a_total 1\na_total 2\n"), "duplicate series"),
            (format!("{head}a_total{{mode=\"x\"}} 1\na_total{{mode=\"x\"}} 2\n"), "duplicate series"),
            (format!("{head}b_total 1\n"), "outside its family"),
            (format!("{head}a_total{{channel=\"c1\"}} 1\n"), "unbounded label \"channel\""),
            (format!("{head}a_total{{mode=\"echo}} 1\n"), "unterminated label value"),
            ("# HELP a A.\n# TYPE a counter\na 1\n".into(), "does not end in _total"),
            (format!("{head}a_total 1"), "does not end with a newline"),
            (
                "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\nb 1\n# TYPE a gauge\n".into(),
                "family a resumed",
            ),
        ];
        let hist = "# HELP h_seconds H.\n# TYPE h_seconds histogram\n";
        let good_hist = format!("{hist}h_seconds_bucket{{le=\"0.1\"}} 1\nh_seconds_bucket{{le=\"+Inf\"}} 2\nh_seconds_sum 0.3\nh_seconds_count 2\n");
        assert_eq!(check_exposition(&good_hist).len(), 4);
        let hist_cases: [(String, &str); 5] = [
            (format!("{hist}h_seconds_bucket{{le=\"0.1\"}} 3\nh_seconds_bucket{{le=\"+Inf\"}} 2\n"), "not cumulative"),
            (format!("{hist}h_seconds_bucket{{le=\"1\"}} 1\nh_seconds_bucket{{le=\"0.1\"}} 2\n"), "not in ascending le"),
            (format!("{hist}h_seconds_bucket{{le=\"+Inf\"}} 2\nh_seconds_count 3\n"), "_count is not its +Inf bucket"),
            (format!("{hist}h_seconds_sum{{le=\"1\"}} 2\n"), "le label missing or misplaced"),
            (format!("{hist}h_seconds 2\n"), "outside its family"),
        ];
        for (text, why) in cases.into_iter().chain(hist_cases) {
            match try_check_exposition(&text) {
                Ok(_) => panic!("accepted {text:?}"),
                Err(e) => assert!(e.contains(why), "{text:?}: {e:?} does not say {why:?}"),
            }
        }
    }
}

//! Prometheus text exposition (format 0.0.4) of the service metrics. Pure: a snapshot in, text
//! out. No per-call labels: cardinality stays bounded whatever the call volume.

use std::fmt::Write;

use rtpvisor_actors::actors::metrics::{MetricsSnapshot, ModeMetrics};
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

    family(
        &mut o,
        "rtpvisor_latency_seconds",
        "summary",
        "Per-packet latency: echo mode delay against the stream's schedule, probe mode round-trip time.",
    );
    for (name, mm) in modes.iter().take(2) {
        for (q, v) in [("0.5", mm.latency.p50_ms), ("0.95", mm.latency.p95_ms), ("0.99", mm.latency.p99_ms), ("0.999", mm.latency.p999_ms)] {
            sample(&mut o, "rtpvisor_latency_seconds", &format!("mode=\"{name}\",quantile=\"{q}\""), v / 1000.0);
        }
        let count = mm.latency.count as f64;
        sample(&mut o, "rtpvisor_latency_seconds_sum", &format!("mode=\"{name}\""), mm.latency.avg_ms * count / 1000.0);
        sample(&mut o, "rtpvisor_latency_seconds_count", &format!("mode=\"{name}\""), count);
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

    family(&mut o, "rtpvisor_ari_events_total", "counter", "ARI events received, by outcome.");
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"handled\"", m.ari.events.saturating_sub(m.ari.unknown + m.ari.malformed) as f64);
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"unknown_type\"", m.ari.unknown as f64);
    sample(&mut o, "rtpvisor_ari_events_total", "outcome=\"malformed\"", m.ari.malformed as f64);

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

//! Call quality as an R-factor and a MOS: the ITU-T G.107 E-model, simplified for G.711 the way
//! VoIP monitoring tools do it (rtpengine, VoIPmonitor, PingPlotter compute an "effective
//! latency" from delay and jitter, and take the loss impairment of the codec).
//!
//! ```text
//! effective latency  d  = one-way delay + 2 x jitter + 10 ms (codec)
//! delay impairment   Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)       (H: step function)
//! loss impairment    Ie_eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)  (G.107 eq. 7-29)
//! R                     = 93.2 - Id - Ie_eff                              (G.107 defaults: Ro - Is)
//! MOS                   = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6, R in [0, 100]  (G.107 Annex B)
//! ```
//!
//! - `Id` is the Cole & Rosenbluth fit of G.107's delay impairment with its default echo
//!   settings ("Voice over IP performance monitoring", ACM CCR 31(2), 2001), the form the
//!   tools above use. R drops below 70 once `d` passes about 319 ms.
//! - G.711 with packet loss concealment: `Ie = 0`, `Bpl = 25.1` (ITU-T G.113 Appendix I),
//!   random loss (`BurstR = 1`); `Ppl` in percent.
//! - The MOS is clamped to [1, 4.5] (R 93.2, a perfect G.711 call, gives 4.41).
//!
//! Pure: figures in, figures out; the callers decide what "one-way delay" and "jitter" are
//! for their mode (see [`Inputs`]); [`stream_quality`] decides it for a call's stream.

use crate::media::StreamReport;
use crate::mode::CallMode;

/// Fixed delay the codec and packetisation add, ms (the tools' "10 ms").
pub const CODEC_DELAY_MS: f64 = 10.0;
/// R with no impairment: G.107's `Ro - Is` at its default settings.
pub const R_MAX: f64 = 93.2;
/// G.711's equipment impairment (G.113 Appendix I).
pub const IE_G711: f64 = 0.0;
/// G.711's packet-loss robustness with PLC (G.113 Appendix I).
pub const BPL_G711_PLC: f64 = 25.1;
/// Where the delay impairment's second slope starts, ms (Cole & Rosenbluth).
const ID_KNEE_MS: f64 = 177.3;

/// What a quality estimate is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Inputs {
    /// Mouth-to-ear delay the network adds, ms (probe mode: half the round trip).
    pub one_way_delay_ms: f64,
    /// Variation of that delay, ms (echo mode: RFC 3550 interarrival jitter).
    pub jitter_ms: f64,
    /// Lost packets over expected ones, 0..=1.
    pub loss_ratio: f64,
}

/// An R-factor and the MOS it maps to.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quality {
    pub r_factor: f64,
    pub mos: f64,
}

/// `d`, ms: the delay a listener perceives, jitter counting twice (a jitter buffer holds about
/// that much).
pub fn effective_latency_ms(i: &Inputs) -> f64 {
    finite_nonneg(i.one_way_delay_ms) + 2.0 * finite_nonneg(i.jitter_ms) + CODEC_DELAY_MS
}

/// `Id` for an effective latency `d` in ms.
pub fn delay_impairment(d_ms: f64) -> f64 {
    let d = finite_nonneg(d_ms);
    let knee = if d > ID_KNEE_MS { 0.11 * (d - ID_KNEE_MS) } else { 0.0 };
    0.024 * d + knee
}

/// `Ie_eff` of G.711 with PLC for a loss ratio (0..=1; clamped), random loss.
pub fn loss_impairment(loss_ratio: f64) -> f64 {
    let ppl = finite_nonneg(loss_ratio).min(1.0) * 100.0;
    IE_G711 + (95.0 - IE_G711) * ppl / (ppl + BPL_G711_PLC)
}

/// R, clamped to [0, 100].
pub fn r_factor(i: &Inputs) -> f64 {
    let r = R_MAX - delay_impairment(effective_latency_ms(i)) - loss_impairment(i.loss_ratio);
    r.clamp(0.0, 100.0)
}

/// G.107 Annex B: the MOS an R maps to, clamped to [1, 4.5].
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    let r = r.min(100.0);
    let mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6;
    mos.clamp(1.0, 4.5)
}

/// R and MOS of `i`, each rounded to two decimals (what the API shows).
pub fn estimate(i: &Inputs) -> Quality {
    let r = r_factor(i);
    Quality { r_factor: round2(r), mos: round2(mos_from_r(r)) }
}

/// Probe mode: one-way delay is half the median round trip (the median, so that a few slow
/// probes do not move it), jitter half the spread between the median and the 95th percentile
/// (probes carry no RTP timestamps of the far end, so RFC 3550 jitter is not available).
pub fn probe_inputs(rtt_p50_ms: f64, rtt_p95_ms: f64, loss_ratio: f64) -> Inputs {
    Inputs {
        one_way_delay_ms: finite_nonneg(rtt_p50_ms) / 2.0,
        jitter_ms: (finite_nonneg(rtt_p95_ms) - finite_nonneg(rtt_p50_ms)).max(0.0) / 2.0,
        loss_ratio,
    }
}

/// Echo mode: only the inbound half of the path is seen, with no clock shared with the sender,
/// so the absolute one-way delay is unknown and counted as 0; the estimate rests on the
/// measured jitter and loss (the "delay against schedule" is relative to the fastest packet,
/// which jitter already reflects).
pub fn echo_inputs(jitter_ms: f64, loss_ratio: f64) -> Inputs {
    Inputs { one_way_delay_ms: 0.0, jitter_ms, loss_ratio }
}

fn finite_nonneg(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A call's quality from its stream: probe from its round trips (median and 95th percentile)
/// and lost probes, echo from its RFC 3550 jitter and loss. `None` before any packet's fate is
/// known.
pub fn stream_quality(r: &StreamReport) -> Option<Quality> {
    let inputs = match (r.mode, &r.probe, &r.receive) {
        (CallMode::Probe, Some(p), _) => {
            let judged = p.returned + p.lost;
            if judged == 0 {
                return None;
            }
            probe_inputs(r.latency.p50_ms, r.latency.p95_ms, p.lost as f64 / judged as f64)
        }
        (CallMode::Echo, _, Some(rx)) => {
            if rx.expected == 0 {
                return None;
            }
            echo_inputs(rx.jitter_ms, rx.lost as f64 / rx.expected as f64)
        }
        _ => return None,
    };
    Some(estimate(&inputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn perfect_g711_is_4_41() {
        assert!(close(mos_from_r(93.2), 4.41, 0.005), "{}", mos_from_r(93.2));
        // A clean LAN call: only the codec's 10 ms.
        let q = estimate(&Inputs::default());
        assert!(close(q.r_factor, 92.96, 0.005), "{q:?}");
        assert!(close(q.mos, 4.41, 0.01), "{q:?}");
    }

    #[test]
    fn known_mos_points() {
        // G.107 Annex B: R 50 -> 2.58, R 70 -> 3.60, R 80 -> 4.02, R 90 -> 4.34.
        for (r, mos) in [(50.0, 2.58), (60.0, 3.1), (70.0, 3.6), (80.0, 4.02), (90.0, 4.34), (100.0, 4.5)] {
            assert!(close(mos_from_r(r), mos, 0.01), "R {r}: {}", mos_from_r(r));
        }
    }

    #[test]
    fn five_percent_loss_lowers_it() {
        let clean = estimate(&Inputs::default());
        let lossy = estimate(&Inputs { loss_ratio: 0.05, ..Inputs::default() });
        // Ie_eff = 95 * 5 / 30.1 = 15.78.
        assert!(close(loss_impairment(0.05), 15.78, 0.01), "{}", loss_impairment(0.05));
        assert!(close(lossy.r_factor, 92.96 - 15.78, 0.01), "{lossy:?}");
        assert!(lossy.mos < clean.mos - 0.3, "{clean:?} {lossy:?}");
        assert!(lossy.mos > 3.5 && lossy.mos < 4.0, "G.711 with PLC stays fair at 5 %: {lossy:?}");
    }

    #[test]
    fn long_delay_brings_r_below_70() {
        // 300 ms one way with 10 ms of jitter: d = 300 + 20 + 10 = 330 ms.
        let r = r_factor(&Inputs { one_way_delay_ms: 300.0, jitter_ms: 10.0, loss_ratio: 0.0 });
        assert!(r < 70.0, "{r}");
        // 300 ms flat, no jitter: d = 310 ms, R = 93.2 - 7.44 - 14.6 = 71.2 (just above 70: the
        // model's 70 is at d = 318.7 ms).
        let r = r_factor(&Inputs { one_way_delay_ms: 300.0, ..Inputs::default() });
        assert!(close(r, 71.16, 0.01), "{r}");
        assert!(close(r_factor(&Inputs { one_way_delay_ms: 308.7, ..Inputs::default() }), 70.0, 0.01));
        // Below the knee the slope is gentle: 150 ms one way is still "satisfied" (R > 80).
        assert!(r_factor(&Inputs { one_way_delay_ms: 150.0, ..Inputs::default() }) > 80.0);
    }

    #[test]
    fn clamps() {
        assert_eq!(mos_from_r(-5.0), 1.0);
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(150.0), 4.5);
        // Everything lost and a second of delay: R floors at 0, MOS at 1.
        let q = estimate(&Inputs { one_way_delay_ms: 1000.0, jitter_ms: 200.0, loss_ratio: 1.0 });
        assert_eq!(q.r_factor, 0.0);
        assert_eq!(q.mos, 1.0);
        // Loss above 1 counts as 1; negative and non-finite inputs count as 0.
        assert_eq!(loss_impairment(3.0), loss_impairment(1.0));
        let clean = r_factor(&Inputs::default());
        assert_eq!(r_factor(&Inputs { one_way_delay_ms: -50.0, jitter_ms: f64::NAN, loss_ratio: -0.1 }), clean);
        assert_eq!(r_factor(&Inputs { one_way_delay_ms: f64::INFINITY, ..Inputs::default() }), clean);
    }

    #[test]
    fn monotonic_in_every_input() {
        let mut prev = f64::INFINITY;
        for ms in (0..2000).step_by(5) {
            let r = r_factor(&Inputs { one_way_delay_ms: ms as f64, ..Inputs::default() });
            assert!(r <= prev, "delay {ms}");
            prev = r;
        }
        prev = f64::INFINITY;
        for ms in 0..500 {
            let r = r_factor(&Inputs { jitter_ms: ms as f64, ..Inputs::default() });
            assert!(r <= prev, "jitter {ms}");
            prev = r;
        }
        prev = f64::INFINITY;
        for permille in 0..=1000 {
            let r = r_factor(&Inputs { loss_ratio: permille as f64 / 1000.0, ..Inputs::default() });
            assert!(r <= prev, "loss {permille}");
            prev = r;
        }
        // The MOS follows R up (the cubic dips below 1 for R < 3.2; the clamp keeps it at 1).
        let mut prev = 0.0;
        for r in 0..=1000 {
            let m = mos_from_r(r as f64 / 10.0);
            assert!(m >= prev, "R {}", r as f64 / 10.0);
            prev = m;
        }
    }

    #[test]
    fn mode_inputs() {
        let p = probe_inputs(40.0, 60.0, 0.01);
        assert_eq!(p, Inputs { one_way_delay_ms: 20.0, jitter_ms: 10.0, loss_ratio: 0.01 });
        // A p95 below the p50 (cannot happen, but never a negative jitter).
        assert_eq!(probe_inputs(40.0, 30.0, 0.0).jitter_ms, 0.0);
        assert_eq!(echo_inputs(3.0, 0.02), Inputs { one_way_delay_ms: 0.0, jitter_ms: 3.0, loss_ratio: 0.02 });
    }
}

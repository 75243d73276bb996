//! Whether a caller's StasisStart becomes a call: pure, no IO.
//!
//! The order matters. A StasisStart for a caller that already is a live call (Asterisk sends a
//! second one after a masquerade, or a test or a proxy repeats it) is ignored first, before
//! any check that could refuse it: refusing hangs the caller up, which would end a live call
//! because of a duplicate event. Then the mode argument, then the service's own state
//! (shutting down, degraded), then the admission limit.

use crate::mode::CallMode;

/// The service's side of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// False once shutdown began.
    pub accepting: bool,
    /// The call actors' restart intensity is exceeded: (failures allowed, window in ms).
    pub degraded: Option<(u32, u64)>,
    /// Live calls of every mode.
    pub live: usize,
    /// `media.max_calls`.
    pub max_calls: usize,
}

/// What to do with a StasisStart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The caller already is a live call: nothing (never hang it up).
    Duplicate,
    /// Start a call in this mode.
    Start(CallMode),
    /// Hang the caller up with congestion; count the refusal under `mode`.
    Refuse { mode: CallMode, why: String },
}

/// Decides for a caller whose StasisStart carried `args` (the first one names the mode, empty
/// or absent means `default_mode`); `live_call`: the caller already is one of ours.
pub fn decide(args: &[String], default_mode: CallMode, live_call: bool, load: Load) -> Decision {
    if live_call {
        return Decision::Duplicate;
    }
    let mode = match args.first().filter(|a| !a.is_empty()) {
        None => default_mode,
        Some(a) => match a.parse::<CallMode>() {
            Ok(m) => m,
            Err(e) => return Decision::Refuse { mode: default_mode, why: e.to_string() },
        },
    };
    let why = if !load.accepting {
        "shutting down".to_string()
    } else if let Some((max, window_ms)) = load.degraded {
        format!("degraded: more than {max} call actor failures within {window_ms} ms")
    } else if load.live >= load.max_calls {
        format!("at the admission limit of {} concurrent calls", load.max_calls)
    } else {
        return Decision::Start(mode);
    };
    Decision::Refuse { mode, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Load = Load { accepting: true, degraded: None, live: 0, max_calls: 10 };

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_mode_comes_from_the_first_argument_or_the_default() {
        assert_eq!(decide(&args(&["probe"]), CallMode::Echo, false, OPEN), Decision::Start(CallMode::Probe));
        assert_eq!(decide(&args(&[]), CallMode::Echo, false, OPEN), Decision::Start(CallMode::Echo));
        assert_eq!(decide(&args(&[""]), CallMode::Probe, false, OPEN), Decision::Start(CallMode::Probe));
        let Decision::Refuse { mode, why } = decide(&args(&["talk"]), CallMode::Echo, false, OPEN) else { panic!() };
        assert_eq!(mode, CallMode::Echo);
        assert!(why.contains("unknown call mode"), "{why}");
    }

    #[test]
    fn a_duplicate_is_ignored_whatever_the_load() {
        for load in [
            OPEN,
            Load { accepting: false, ..OPEN },
            Load { degraded: Some((2, 4000)), ..OPEN },
            Load { live: 10, ..OPEN },
        ] {
            assert_eq!(decide(&args(&["echo"]), CallMode::Echo, true, load), Decision::Duplicate, "{load:?}");
            assert_eq!(decide(&args(&["bad mode"]), CallMode::Echo, true, load), Decision::Duplicate, "{load:?}");
        }
    }

    #[test]
    fn refusals_say_why_in_order() {
        let refused = |load| match decide(&args(&["probe"]), CallMode::Echo, false, load) {
            Decision::Refuse { mode, why } => {
                assert_eq!(mode, CallMode::Probe);
                why
            }
            d => panic!("{d:?}"),
        };
        assert_eq!(refused(Load { accepting: false, degraded: Some((2, 4000)), live: 10, ..OPEN }), "shutting down");
        assert_eq!(
            refused(Load { degraded: Some((2, 4000)), live: 10, ..OPEN }),
            "degraded: more than 2 call actor failures within 4000 ms"
        );
        assert_eq!(refused(Load { live: 10, ..OPEN }), "at the admission limit of 10 concurrent calls");
        assert_eq!(decide(&args(&["probe"]), CallMode::Echo, false, Load { live: 9, ..OPEN }), Decision::Start(CallMode::Probe));
    }
}

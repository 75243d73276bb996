//! Failure records for the supervision tree: what the last panic said (captured by a panic
//! hook, since actix drops a panicked actor without telling anyone why), and when.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Installs (once) a panic hook that keeps the last panic's message and location, then runs
/// the previous hook (which prints it as usual).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some(format!("panic: {msg}{at}"));
            }
            previous(info);
        }));
    });
}

/// The message of the most recent panic, taken (so it is attributed once).
pub fn take_last_panic() -> Option<String> {
    LAST_PANIC.lock().ok().and_then(|mut l| l.take())
}

/// One failure: why and when.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureRecord {
    pub reason: String,
    /// RFC 3339, UTC.
    pub at: String,
}

impl FailureRecord {
    pub fn now(reason: impl Into<String>) -> Self {
        FailureRecord { reason: reason.into(), at: humantime::format_rfc3339_millis(SystemTime::now()).to_string() }
    }
}

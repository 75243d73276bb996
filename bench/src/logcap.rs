//! The bench's logger. It prints the service's warnings and errors (rate-limited, so a fault
//! that logs per packet cannot flood the terminal) and, while capturing, timestamps the two
//! lines that bracket a call's setup on the service side: `StasisStart event received for
//! channel X` and `Created channel X ...` (both logged by the actor system as it handles them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Warning and error lines printed per process at most; the rest are counted.
const PRINT_LIMIT: u64 = 200;

struct BenchLogger {
    verbose: bool,
    capturing: AtomicBool,
    captured: Mutex<Vec<(Instant, String)>>,
    printed: AtomicU64,
    suppressed: AtomicU64,
}

static LOGGER: OnceLock<BenchLogger> = OnceLock::new();

/// Installs the logger (once). `verbose` prints info lines too.
pub fn init(verbose: bool) {
    let logger = LOGGER.get_or_init(|| BenchLogger {
        verbose,
        capturing: AtomicBool::new(false),
        captured: Mutex::new(Vec::new()),
        printed: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Starts timestamping call-setup lines (clears what was captured before).
pub fn start_capture() {
    if let Some(l) = LOGGER.get() {
        l.captured.lock().expect("not poisoned").clear();
        l.capturing.store(true, Ordering::SeqCst);
    }
}

/// Stops capturing and returns the captured lines with their instants.
pub fn take_captured() -> Vec<(Instant, String)> {
    match LOGGER.get() {
        Some(l) => {
            l.capturing.store(false, Ordering::SeqCst);
            std::mem::take(&mut *l.captured.lock().expect("not poisoned"))
        }
        None => Vec::new(),
    }
}

/// Warning/error lines not printed because of the limit.
pub fn suppressed() -> u64 {
    LOGGER.get().map_or(0, |l| l.suppressed.load(Ordering::Relaxed))
}

impl Log for BenchLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= Level::Warn || (m.level() == Level::Info && (self.verbose || self.capturing.load(Ordering::Relaxed)))
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        if r.level() == Level::Info && self.capturing.load(Ordering::Relaxed) {
            let now = Instant::now();
            let msg = r.args().to_string();
            if msg.starts_with("StasisStart event received for channel ") || msg.starts_with("Created channel ") {
                self.captured.lock().expect("not poisoned").push((now, msg));
                return;
            }
            if !self.verbose {
                return;
            }
        }
        if r.level() <= Level::Warn || self.verbose {
            if self.printed.fetch_add(1, Ordering::Relaxed) < PRINT_LIMIT {
                eprintln!("[{}] {}: {}", r.level(), r.target(), r.args());
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {}
}

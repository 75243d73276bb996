//! What bounds the media engine's command queue: a [`Gate`] that counts the commands the engine
//! may refuse and refuses past a capacity (each refusal counted), and [`Coalesced`] requests,
//! where everyone who asks while one request is queued waits for that one answer. Pure
//! bookkeeping (atomics, a mutex-held list); the engine ([`crate::media`]) owns the queue and
//! the answers.
//!
//! Why two kinds of command: the queue is bounded by refusing what the caller can do without
//! (a new call's stream: the call fails cleanly and Asterisk is told so), never what undoes
//! state the engine holds (a removal: refusing it would leak the call's socket and figures).
//! Those are bounded by what they undo (each live call sends its own), so the queue's length
//! stays bounded without refusing them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Counts queued refusable commands; a command that would make them more than `capacity` is
/// refused, and counted.
#[derive(Debug)]
pub struct Gate {
    queued: AtomicUsize,
    capacity: usize,
    refused: AtomicU64,
}

impl Gate {
    pub fn new(capacity: usize) -> Self {
        Gate { queued: AtomicUsize::new(0), capacity, refused: AtomicU64::new(0) }
    }

    /// Takes a place in the queue; false (and counted as refused) when `capacity` commands are
    /// queued already.
    pub fn enter(&self) -> bool {
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.capacity).then_some(n + 1))
            .is_ok();
        if !admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Gives a place back: its command was taken off the queue (or never got on it).
    pub fn leave(&self) {
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refusable commands queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Commands refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Someone waiting for an answer, who may have given up meanwhile (a timed-out request).
pub trait Waiter {
    fn gave_up(&self) -> bool;
}

/// Requests that share one answer: whoever asks while a request is queued waits for its
/// answer instead of queueing another, so the queue holds at most one of them and the engine
/// computes the answer once for everyone who asked.
#[derive(Debug)]
pub struct Coalesced<W> {
    state: Mutex<Waiting<W>>,
}

#[derive(Debug)]
struct Waiting<W> {
    /// A request is on the queue, not yet taken by the engine.
    queued: bool,
    waiters: Vec<W>,
}

impl<W> Default for Coalesced<W> {
    fn default() -> Self {
        Coalesced { state: Mutex::new(Waiting { queued: false, waiters: Vec::new() }) }
    }
}

impl<W: Waiter> Coalesced<W> {
    /// The list, also after a thread panicked holding it (it holds waiters only).
    fn lock(&self) -> MutexGuard<'_, Waiting<W>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds `waiter`; true when the caller is to queue the request (none is queued). Waiters
    /// who gave up are dropped here, so the list holds only those still waiting, however long
    /// the engine takes.
    pub fn join(&self, waiter: W) -> bool {
        let mut s = self.lock();
        s.waiters.retain(|w| !w.gave_up());
        s.waiters.push(waiter);
        !std::mem::replace(&mut s.queued, true)
    }

    /// The request could not be queued (the engine is gone): every waiter is dropped, which
    /// tells each that no answer will come.
    pub fn cancel(&self) {
        let mut s = self.lock();
        s.queued = false;
        s.waiters.clear();
    }

    /// The engine takes the queued request: the waiters still waiting, and how many had given
    /// up (dropped, not answered). A request asked for after this queues a new one.
    pub fn take(&self) -> (Vec<W>, usize) {
        let mut s = self.lock();
        s.queued = false;
        let mut waiters = std::mem::take(&mut s.waiters);
        drop(s);
        let before = waiters.len();
        waiters.retain(|w| !w.gave_up());
        let gave_up = before - waiters.len();
        (waiters, gave_up)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn the_gate_refuses_past_its_capacity_and_counts_it() {
        let g = Gate::new(2);
        assert!(g.enter());
        assert!(g.enter());
        assert!(!g.enter());
        assert!(!g.enter());
        assert_eq!((g.queued(), g.refused()), (2, 2));
        g.leave();
        assert!(g.enter(), "a place freed is taken again");
        assert_eq!((g.queued(), g.refused(), g.capacity()), (2, 2, 2));
        for _ in 0..5 {
            g.leave();
        }
        assert_eq!(g.queued(), 0, "never below zero");
        assert!(!Gate::new(0).enter(), "capacity zero refuses everything");
    }

    #[test]
    fn the_gate_holds_under_threads() {
        let g = std::sync::Arc::new(Gate::new(100));
        let admitted: usize = (0..4)
            .map(|_| {
                let g = std::sync::Arc::clone(&g);
                std::thread::spawn(move || (0..1000).filter(|_| g.enter()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!((admitted, g.queued(), g.refused()), (100, 100, 3900));
    }

    /// A waiter whose giving up the test decides.
    struct W(u32, Rc<Cell<bool>>);
    impl Waiter for W {
        fn gave_up(&self) -> bool {
            self.1.get()
        }
    }

    fn waiter(id: u32) -> (W, Rc<Cell<bool>>) {
        let gone = Rc::new(Cell::new(false));
        (W(id, Rc::clone(&gone)), gone)
    }

    #[test]
    fn requests_asked_together_queue_once_and_share_the_answer() {
        let c = Coalesced::default();
        let (a, _) = waiter(1);
        let (b, b_gone) = waiter(2);
        let (d, _) = waiter(3);
        assert!(c.join(a), "the first queues the request");
        assert!(!c.join(b), "the next ones wait for it");
        assert!(!c.join(d));
        b_gone.set(true); // timed out before the engine got to it
        let (waiters, gave_up) = c.take();
        assert_eq!(waiters.iter().map(|w| w.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(gave_up, 1);
        // Taken: the next asker queues a new request.
        let (e, _) = waiter(4);
        assert!(c.join(e));
        let (waiters, gave_up) = c.take();
        assert_eq!((waiters.len(), gave_up), (1, 0));
        let (nobody, gave_up) = c.take();
        assert_eq!((nobody.len(), gave_up), (0, 0), "taking twice finds no one");
    }

    #[test]
    fn waiters_who_gave_up_do_not_pile_up_while_the_engine_is_away() {
        let c = Coalesced::default();
        let mut last: Option<Rc<Cell<bool>>> = None;
        for i in 0..1000 {
            if let Some(g) = last.take() {
                g.set(true); // each gives up before the next asks
            }
            let (w, gone) = waiter(i);
            c.join(w);
            last = Some(gone);
        }
        assert_eq!(c.lock().waiters.len(), 1, "only the last one is still waiting");
        let (waiters, gave_up) = c.take();
        assert_eq!((waiters.len(), gave_up), (1, 0));
    }

    #[test]
    fn a_cancelled_request_drops_its_waiters_and_can_be_asked_again() {
        let c = Coalesced::default();
        let (a, _) = waiter(1);
        let (b, _) = waiter(2);
        assert!(c.join(a));
        assert!(!c.join(b));
        c.cancel();
        assert_eq!(c.take().0.len(), 0);
        let (d, _) = waiter(3);
        assert!(c.join(d), "nothing is queued after a cancel");
    }
}

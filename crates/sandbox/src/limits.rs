//! The imitated account's limits: a rolling request window and a cap on
//! requests handled at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// At most `cap` admitted requests in any rolling `window`.
///
/// Only the last `cap` admissions are kept: the window is full exactly when
/// the oldest of them is younger than `window`. Refused requests do not
/// count (they consume no quota, so a client that backs off always gets
/// through). Memory is bounded by `cap` whatever the request rate.
#[derive(Debug)]
pub(crate) struct RateWindow {
    cap: usize,
    window: Duration,
    admitted: Mutex<VecDeque<Instant>>,
}

impl RateWindow {
    /// `cap` 0 means no limit.
    pub(crate) fn new(cap: u32, window: Duration) -> Self {
        Self {
            cap: cap as usize,
            window,
            admitted: Mutex::new(VecDeque::new()),
        }
    }

    /// Admits (and counts) a request arriving at `now`, or refuses it when
    /// `cap` requests were admitted within the last `window`.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        if self.cap == 0 {
            return true;
        }
        // A poisoned lock still holds a consistent queue of instants.
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let full = admitted.len() >= self.cap
            && admitted
                .front()
                .is_some_and(|oldest| now.saturating_duration_since(*oldest) < self.window);
        if full {
            return false;
        }
        admitted.push_back(now);
        while admitted.len() > self.cap {
            admitted.pop_front();
        }
        true
    }
}

/// Counts requests being handled; a [`Slot`] is one of them.
#[derive(Debug)]
pub(crate) struct InFlight {
    max: u32,
    current: Arc<AtomicU32>,
}

/// A place among the requests in flight, given back on drop (also when the
/// client goes away mid-request).
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    /// `max` 0 means no limit.
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            current: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A slot, or `None` when `max` requests are already in flight.
    pub(crate) fn enter(&self) -> Option<Slot> {
        let now = self
            .current
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let slot = Slot(Arc::clone(&self.current));
        if self.max != 0 && now > self.max {
            drop(slot);
            return None;
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_rolls() {
        let w = RateWindow::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(w.admit(at(0)));
        assert!(w.admit(at(10)));
        assert!(w.admit(at(20)));
        // Three in the last 60 s: refused, and not counted.
        assert!(!w.admit(at(30)));
        assert!(!w.admit(at(59)));
        // At 60 s the first admission has left the window.
        assert!(w.admit(at(60)));
        assert!(!w.admit(at(61)));
        // At 75 s the one at 10 s has left too: the refusals at 30 s and
        // 59 s did not take its place.
        assert!(w.admit(at(75)));
        assert!(!w.admit(at(76)));
    }

    #[test]
    fn a_zero_cap_admits_everything() {
        let w = RateWindow::new(0, Duration::from_secs(60));
        let now = Instant::now();
        assert!((0..10_000).all(|_| w.admit(now)));
    }

    #[test]
    fn in_flight_slots_are_given_back() {
        let f = InFlight::new(2);
        let a = f.enter().expect("first");
        let b = f.enter().expect("second");
        assert!(f.enter().is_none());
        drop(a);
        let c = f.enter().expect("a place came free");
        assert!(f.enter().is_none());
        drop((b, c));
        assert_eq!(f.current.load(Ordering::Acquire), 0);
        let unlimited = InFlight::new(0);
        let slots: Vec<Slot> = (0..100).filter_map(|_| unlimited.enter()).collect();
        assert_eq!(slots.len(), 100);
    }
}

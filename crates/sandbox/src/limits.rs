//! The imitated account's limits: a request window (rolling or fixed)
//! and a cap on requests handled at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateWindowKind;

/// At most `cap` admitted requests per `window`, counted either over any
/// rolling `window` or per fixed `window` from the start.
///
/// Rolling: only the last `cap` admissions are kept, and the window is full
/// exactly when the oldest of them is younger than `window`. Fixed: the
/// admissions of the current window (`start + k × window`) are counted and
/// the count starts again at the next one. Refused requests do not count
/// (they consume no quota, so a client that backs off always gets
/// through). Memory is bounded by `cap` whatever the request rate.
#[derive(Debug)]
pub(crate) struct RateWindow {
    cap: usize,
    window: Duration,
    kind: RateWindowKind,
    start: Instant,
    state: Mutex<WindowState>,
}

#[derive(Debug, Default)]
struct WindowState {
    /// Rolling: the last `cap` admissions, oldest first.
    admitted: VecDeque<Instant>,
    /// Fixed: the number of the current window and its admissions.
    current: u64,
    count: usize,
}

/// What the window said to one request: whether it was admitted and how
/// many more it admits now (after this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(crate) admitted: bool,
    pub(crate) remaining: u32,
}

impl RateWindow {
    /// `cap` 0 means no limit.
    pub(crate) fn new(cap: u32, window: Duration, kind: RateWindowKind) -> Self {
        Self {
            cap: cap as usize,
            window,
            kind,
            start: Instant::now(),
            state: Mutex::new(WindowState::default()),
        }
    }

    /// Whether there is a cap at all.
    pub(crate) fn is_capped(&self) -> bool {
        self.cap != 0
    }

    /// Admits (and counts) a request arriving at `now`, or refuses it when
    /// the window already holds `cap` admissions.
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        self.decide(now, true)
    }

    /// What [`RateWindow::admit`] would say at `now`, counting nothing.
    pub(crate) fn peek(&self, now: Instant) -> Admission {
        self.decide(now, false)
    }

    fn decide(&self, now: Instant, count: bool) -> Admission {
        if self.cap == 0 {
            return Admission {
                admitted: true,
                remaining: u32::MAX,
            };
        }
        // A poisoned lock still holds consistent counts.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.used(&mut state, now);
        let admitted = used < self.cap;
        if admitted && count {
            match self.kind {
                RateWindowKind::Rolling => {
                    state.admitted.push_back(now);
                    while state.admitted.len() > self.cap {
                        state.admitted.pop_front();
                    }
                }
                RateWindowKind::Fixed => state.count += 1,
            }
        }
        let used = used + usize::from(admitted && count);
        let remaining = u32::try_from(self.cap.saturating_sub(used)).unwrap_or(u32::MAX);
        Admission {
            admitted,
            remaining,
        }
    }

    /// Admissions that count against a request arriving at `now`.
    fn used(&self, state: &mut WindowState, now: Instant) -> usize {
        match self.kind {
            RateWindowKind::Rolling => {
                // Oldest first: those younger than the window are a suffix.
                let young = state
                    .admitted
                    .partition_point(|at| now.saturating_duration_since(*at) >= self.window);
                state.admitted.len() - young
            }
            RateWindowKind::Fixed => {
                let since = now.saturating_duration_since(self.start);
                let current = (since.as_nanos() / self.window.as_nanos().max(1)) as u64;
                if current != state.current {
                    state.current = current;
                    state.count = 0;
                }
                state.count
            }
        }
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
        let w = RateWindow::new(3, Duration::from_secs(60), RateWindowKind::Rolling);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let admit = |s| w.admit(at(s));
        let yes = |remaining| Admission {
            admitted: true,
            remaining,
        };
        let no = Admission {
            admitted: false,
            remaining: 0,
        };
        assert_eq!(admit(0), yes(2));
        assert_eq!(admit(10), yes(1));
        assert_eq!(w.peek(at(15)), yes(1));
        assert_eq!(admit(20), yes(0));
        // Three in the last 60 s: refused, and not counted.
        assert_eq!(admit(30), no);
        assert_eq!(admit(59), no);
        // At 60 s the first admission has left the window.
        assert_eq!(w.peek(at(60)), yes(1));
        assert_eq!(admit(60), yes(0));
        assert_eq!(admit(61), no);
        // At 75 s the one at 10 s has left too: the refusals at 30 s and
        // 59 s did not take its place.
        assert_eq!(admit(75), yes(0));
        assert_eq!(admit(76), no);
        // Long after, the whole cap is free again.
        assert_eq!(w.peek(at(500)), yes(3));
    }

    #[test]
    fn the_fixed_window_starts_again_at_each_boundary() {
        let w = RateWindow::new(3, Duration::from_secs(60), RateWindowKind::Fixed);
        let t0 = w.start;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let admitted = |s| w.admit(at(s));
        assert_eq!(admitted(50).remaining, 2);
        assert_eq!(admitted(55).remaining, 1);
        assert_eq!(admitted(59).remaining, 0);
        assert!(!admitted(59).admitted);
        // A new window at 60 s: three more at once, unlike a rolling one.
        for left in [2, 1, 0] {
            let a = admitted(60);
            assert_eq!((a.admitted, a.remaining), (true, left));
        }
        assert!(!admitted(119).admitted);
        assert_eq!(w.peek(at(120)).remaining, 3);
        // A window without requests in between is forgotten too.
        assert_eq!(admitted(300).remaining, 2);
    }

    #[test]
    fn a_zero_cap_admits_everything() {
        for kind in [RateWindowKind::Rolling, RateWindowKind::Fixed] {
            let w = RateWindow::new(0, Duration::from_secs(60), kind);
            let now = Instant::now();
            assert!((0..10_000).all(|_| w.admit(now).admitted));
            assert!(!w.is_capped());
        }
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

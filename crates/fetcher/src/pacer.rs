//! Even request pacing (GCRA with burst 1) that slows down on rate limits.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Hands out send slots evenly spaced at the configured rate.
///
/// This is the generic cell rate algorithm with a burst of one: each call to
/// [`Pacer::acquire`] takes the next free slot (never earlier than now) and
/// waits for it, so requests never bunch, whatever the concurrency. The
/// spacing is `60 s / requests_per_minute` plus 1 % headroom, which absorbs
/// the jitter between our send times and the API's arrival times so that a
/// rolling one-minute window never sees more than the account's limit.
///
/// When the API still answers 40202/40209, [`Pacer::slow_down`] stretches the
/// spacing ×1.5 (at most ×8), but once per round trip: answers to requests
/// sent before the last slowdown took effect say nothing about the new pace
/// (a burst of 40202 answers to requests already in flight would otherwise
/// compound into the ×8 floor at once). Every success shrinks the spacing
/// back by 5 % towards the configured rate, so one slowdown is undone after
/// about eight clean answers. The pace is held in a `std` mutex touched for a
/// few nanoseconds per request; waiting happens outside it.
#[derive(Debug)]
pub struct Pacer {
    base: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next: Option<Instant>,
    factor: f64,
    /// When the last slowdown took effect.
    slowed_at: Option<Instant>,
}

/// Spacing headroom over the exact rate (see the type's documentation).
const HEADROOM: f64 = 1.01;
const MAX_SLOWDOWN: f64 = 8.0;
/// Spacing factor of one slowdown, and the share of it each success undoes.
const SLOWDOWN: f64 = 1.5;
const RECOVERY: f64 = 0.95;

impl Pacer {
    pub fn new(requests_per_minute: u32) -> Self {
        let per_minute = f64::from(requests_per_minute.max(1));
        Self {
            base: Duration::from_secs_f64(60.0 / per_minute * HEADROOM),
            state: Mutex::new(State {
                next: None,
                factor: 1.0,
                slowed_at: None,
            }),
        }
    }

    /// Waits until this caller's slot and returns it: the send time to hand
    /// to [`Pacer::slow_down`] if the answer is a rate limit.
    pub async fn acquire(&self) -> Instant {
        let slot = {
            let mut state = self.lock();
            let now = Instant::now();
            let slot = state.next.map_or(now, |next| next.max(now));
            state.next = Some(slot + self.base.mul_f64(state.factor));
            slot
        };
        tokio::time::sleep_until(slot).await;
        slot
    }

    /// The API said the request sent at `sent_at` was too fast: stretch the
    /// spacing, unless it was sent before the last slowdown took effect.
    pub fn slow_down(&self, sent_at: Instant) {
        let mut state = self.lock();
        if state.slowed_at.is_some_and(|at| sent_at <= at) {
            return;
        }
        state.factor = (state.factor * SLOWDOWN).min(MAX_SLOWDOWN);
        state.slowed_at = Some(Instant::now());
    }

    /// A request succeeded: drift back towards the configured rate.
    pub fn on_success(&self) {
        let mut state = self.lock();
        state.factor = (state.factor * RECOVERY).max(1.0);
    }

    /// The current spacing between two requests.
    pub fn interval(&self) -> Duration {
        self.base.mul_f64(self.lock().factor)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain values; a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Drives `concurrency` tasks through the pacer for `total` requests in
    /// paused time and returns the slot instants relative to the start.
    async fn slots(rpm: u32, concurrency: usize, total: usize) -> Vec<Duration> {
        let pacer = Arc::new(Pacer::new(rpm));
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(total));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (pacer, tx, remaining) = (pacer.clone(), tx.clone(), remaining.clone());
            tasks.push(tokio::spawn(async move {
                while remaining
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
                {
                    pacer.acquire().await;
                    tx.send(start.elapsed()).unwrap();
                    // Simulated request latency, longer than the spacing.
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            }));
        }
        drop(tx);
        for t in tasks {
            t.await.unwrap();
        }
        let mut out = Vec::new();
        while let Some(d) = rx.recv().await {
            out.push(d);
        }
        out.sort();
        out
    }

    /// Largest number of slots inside any window of `window` length.
    fn max_in_window(slots: &[Duration], window: Duration) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..slots.len() {
            while slots[hi] - slots[lo] >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_the_rate_in_any_window() {
        let slots = slots(2000, 30, 5000).await;
        assert_eq!(slots.len(), 5000);
        let worst = max_in_window(&slots, Duration::from_secs(60));
        assert!(worst <= 2000, "{worst} requests in one minute");
        // ... and uses the budget: 5000 requests at 2000/min take ~150 s.
        let span = *slots.last().unwrap();
        let achieved = 4999.0 / span.as_secs_f64() * 60.0;
        assert!(
            achieved > 2000.0 * 0.985,
            "only {achieved:.0} requests per minute"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slows_down_on_rate_limits_and_recovers() {
        let pacer = Pacer::new(600);
        let base = pacer.interval();
        let sent = pacer.acquire().await;
        // Four answers to requests in flight at the same pace: one slowdown.
        for _ in 0..4 {
            pacer.slow_down(sent);
        }
        assert_eq!(pacer.interval(), base.mul_f64(1.5));
        // A request sent after the slowdown and still refused: another one.
        tokio::time::advance(Duration::from_millis(10)).await;
        let later = pacer.acquire().await;
        pacer.slow_down(later);
        assert_eq!(pacer.interval(), base.mul_f64(2.25));
        // Seventeen clean answers undo both.
        for _ in 0..17 {
            pacer.on_success();
        }
        assert_eq!(pacer.interval(), base);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let sent = pacer.acquire().await;
            pacer.slow_down(sent);
        }
        assert_eq!(pacer.interval(), base.mul_f64(MAX_SLOWDOWN));
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_goes_at_once_then_evenly() {
        let pacer = Pacer::new(60);
        let start = Instant::now();
        pacer.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacer.acquire().await;
        pacer.acquire().await;
        let elapsed = start.elapsed();
        assert_eq!(elapsed, Duration::from_secs_f64(2.0 * 1.01));
    }
}

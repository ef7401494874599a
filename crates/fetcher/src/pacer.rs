//! Even request pacing (GCRA with burst 1) that slows down on rate limits.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Hands out send slots evenly spaced at the configured rate.
///
/// Callers of [`Pacer::acquire`] queue in order; the one at the head takes
/// the next slot (one spacing after the previous slot, never earlier than
/// now), waits for it and lets the next one in, so requests never bunch,
/// whatever the concurrency. Only the head's slot is ever decided: a caller
/// still queued gets the spacing in force when its turn comes, so a pace
/// that recovers applies at once to everyone waiting (slots reserved ahead
/// for a queue of 30 callers at a slowed pace would hold the slow pace for
/// seconds after it recovered), and a caller cancelled while queued takes
/// no slot with it. The spacing is `60 s / requests_per_minute` plus 1 %
/// headroom, which absorbs the jitter between our send times and the API's
/// arrival times so that a rolling one-minute window never sees more than
/// the account's limit.
///
/// When the API still answers 40202/40209, [`Pacer::slow_down`] stretches the
/// spacing ×1.5 (at most ×8), but once per round trip: answers to requests
/// sent before the last slowdown took effect say nothing about the new pace
/// (a burst of 40202 answers to requests already in flight would otherwise
/// compound into the ×8 floor at once). The spacing comes back towards the
/// configured rate in two ways: every success shrinks it by 5 % (one
/// slowdown is undone after about eight clean answers), and the excess over
/// the configured spacing halves every second. The second way matters after
/// a deep slowdown, when answers come too slowly for the first: at ×8 a
/// success per five configured slots, so 40 of them took seconds. The pace
/// is held in a `std` mutex touched for a few nanoseconds per request; the
/// queue is a fair async mutex, held by the head caller while it waits for
/// its slot.
#[derive(Debug)]
pub struct Pacer {
    base: Duration,
    /// The last slot handed out; held by the caller at the head of the queue.
    last_slot: tokio::sync::Mutex<Option<Instant>>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    factor: f64,
    /// When the last slowdown took effect.
    slowed_at: Option<Instant>,
    /// When `factor` was last brought up to date with the time-based recovery.
    updated_at: Instant,
}

impl State {
    /// The spacing factor now: the excess over 1 halves every [`HALF_LIFE`].
    fn factor(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated_at);
        let halvings = elapsed.as_secs_f64() / HALF_LIFE.as_secs_f64();
        self.factor = 1.0 + (self.factor - 1.0) * 0.5f64.powf(halvings);
        self.updated_at = now;
        self.factor
    }
}

/// Spacing headroom over the exact rate (see the type's documentation).
const HEADROOM: f64 = 1.01;
const MAX_SLOWDOWN: f64 = 8.0;
/// Spacing factor of one slowdown, and the share of it each success undoes.
const SLOWDOWN: f64 = 1.5;
const RECOVERY: f64 = 0.95;
/// The excess of the spacing over the configured one halves in this time.
const HALF_LIFE: Duration = Duration::from_secs(1);

impl Pacer {
    pub fn new(requests_per_minute: u32) -> Self {
        let per_minute = f64::from(requests_per_minute.max(1));
        Self {
            base: Duration::from_secs_f64(60.0 / per_minute * HEADROOM),
            last_slot: tokio::sync::Mutex::new(None),
            state: Mutex::new(State {
                factor: 1.0,
                slowed_at: None,
                updated_at: Instant::now(),
            }),
        }
    }

    /// Waits until this caller's slot and returns it: the send time to hand
    /// to [`Pacer::slow_down`] if the answer is a rate limit.
    pub async fn acquire(&self) -> Instant {
        // Tokio's mutex is fair: callers take their turns in arrival order.
        let mut last_slot = self.last_slot.lock().await;
        let now = Instant::now();
        let slot = last_slot.map_or(now, |last| (last + self.interval()).max(now));
        tokio::time::sleep_until(slot).await;
        // Set only once the slot is reached: a caller cancelled while
        // waiting leaves the slot to the next one.
        *last_slot = Some(slot);
        slot
    }

    /// The API said the request sent at `sent_at` was too fast: stretch the
    /// spacing, unless it was sent before the last slowdown took effect.
    pub fn slow_down(&self, sent_at: Instant) {
        let mut state = self.lock();
        if state.slowed_at.is_some_and(|at| sent_at <= at) {
            return;
        }
        let now = Instant::now();
        state.factor = (state.factor(now) * SLOWDOWN).min(MAX_SLOWDOWN);
        state.slowed_at = Some(now);
    }

    /// A request succeeded: drift back towards the configured rate.
    pub fn on_success(&self) {
        let mut state = self.lock();
        state.factor = (state.factor(Instant::now()) * RECOVERY).max(1.0);
    }

    /// The current spacing between two requests.
    pub fn interval(&self) -> Duration {
        self.base.mul_f64(self.lock().factor(Instant::now()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain values; a panic elsewhere cannot leave it
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
        // (No time passes in between, so the time-based recovery is nil.)
        pacer.slow_down(Instant::now() + Duration::from_nanos(1));
        assert_eq!(pacer.interval(), base.mul_f64(2.25));
        // Seventeen clean answers undo both.
        for _ in 0..17 {
            pacer.on_success();
        }
        assert_eq!(pacer.interval(), base);
        slow_to_the_floor(&pacer).await;
        assert_eq!(pacer.interval(), base.mul_f64(MAX_SLOWDOWN));
    }

    #[tokio::test(start_paused = true)]
    async fn the_excess_spacing_halves_every_second_without_answers() {
        let pacer = Pacer::new(600);
        let base = pacer.interval();
        slow_to_the_floor(&pacer).await;
        let factor = || pacer.interval().as_secs_f64() / base.as_secs_f64();
        tokio::time::advance(HALF_LIFE).await;
        assert!((factor() - 4.5).abs() < 1e-6, "{}", factor());
        tokio::time::advance(HALF_LIFE * 3).await;
        assert!((factor() - (1.0 + 7.0 / 16.0)).abs() < 1e-6, "{}", factor());
    }

    /// Slows `pacer` down to [`MAX_SLOWDOWN`], each time for a request
    /// sent after the last slowdown.
    async fn slow_to_the_floor(pacer: &Pacer) {
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(1)).await;
            pacer.slow_down(Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn callers_already_waiting_get_the_recovered_pace() {
        let pacer = Arc::new(Pacer::new(600));
        let base = pacer.interval();
        slow_to_the_floor(&pacer).await;
        assert_eq!(pacer.interval(), base.mul_f64(MAX_SLOWDOWN));
        let start = Instant::now();
        pacer.acquire().await;
        // Ten callers queue at the slow pace ...
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire().await - start })
            })
            .collect();
        tokio::task::yield_now().await;
        // ... and the pace recovers before the first of them is due.
        for _ in 0..100 {
            pacer.on_success();
        }
        assert_eq!(pacer.interval(), base);
        let mut slots = Vec::new();
        for task in waiting {
            slots.push(task.await.unwrap());
        }
        slots.sort();
        // The head of the queue had its slot at the slow pace; every later
        // one comes at the recovered pace.
        assert_eq!(slots[0], base.mul_f64(MAX_SLOWDOWN));
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], base);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_cancelled_in_the_queue_takes_no_slot() {
        let pacer = Pacer::new(60);
        let start = Instant::now();
        pacer.acquire().await;
        // Gives up while waiting for the next slot (1.01 s away).
        let gave_up = tokio::time::timeout(Duration::from_millis(500), pacer.acquire()).await;
        assert!(gave_up.is_err());
        // The next caller gets the slot the cancelled one left.
        pacer.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs_f64(1.01));
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

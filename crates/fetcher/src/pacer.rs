//! Even request pacing (GCRA with burst 1) at the rate the account allows:
//! the configured one, the one the API announces in its rate-limit
//! headers, and the one its refusals show.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use backlinks_model::Endpoint;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Hands out send slots evenly spaced at the rate the account allows.
///
/// **Even spacing.** Callers of [`Pacer::acquire`] queue in order; the one
/// at the head takes the next slot (one spacing after the previous slot,
/// never earlier than now), waits for it and lets the next one in, so
/// requests never bunch, whatever the concurrency. Only the head's slot is
/// ever decided, and the head decides it again whenever an answer brings
/// news (a header, a refusal, a success): a caller still queued gets the
/// spacing in force when its turn comes, so a pace that changes applies at
/// once to everyone waiting, and a caller cancelled while queued takes no
/// slot with it. The spacing is `60 s / rate` plus 1 % headroom, which
/// absorbs the jitter between our send times and the API's arrival times
/// so that a one-minute window (rolling or fixed) never sees more than
/// the rate.
///
/// **The rate** is the lowest of: the configured `requests_per_minute`;
/// the `X-RateLimit-Limit` the API announced ([`Pacer::observe`]; the
/// lowest of the endpoints' latest announcements, each for a minute after
/// it arrived); and an estimate from 40202 refusals that came without
/// headers (below). So the pacer never plans above the announced limit.
///
/// **What is left.** `X-RateLimit-Remaining` is what is left of the
/// minute's budget when the API counted that request. What is left now is
/// that figure less the slots handed out since that request's slot (they
/// may have been counted since). When it falls below a small reserve
/// (2 requests, or 0.5 % of the limit if more) the spacing stretches in
/// proportion (`reserve / left` times the limit's spacing; twice the
/// reserve's worth when nothing is left, until an answer says the budget is
/// back), so the pace slows down before the budget runs out instead of
/// after a 40202. The readings this must be safe under (docs/api-behaviour.md:
/// no source says) are: a rolling or a fixed window, a window per endpoint
/// or per account, `Remaining` counting the request it answers or not.
/// Subtracting every slot since, without crediting a rolling window for
/// what ages out of it, assumes the fixed window (nothing comes back
/// before the reset), the strictest; the lowest limit and the freshest
/// `Remaining` over all endpoints assume one shared budget, the strictest;
/// and the reserve of at least 2 covers the off-by-one. Under a rolling
/// window this costs a share of the rate of about `latency / 60 s`.
///
/// **Refusals.** A 40202 or 40209 ([`Pacer::on_rate_limited`],
/// [`Pacer::on_too_many_in_flight`]) stretches the spacing ×1.5 (at most
/// ×8), but once per round trip: answers to requests sent before the last
/// slowdown took effect say nothing about the new pace. The stretch comes
/// back towards the rate in two ways: every success shrinks it by 5 %, and
/// its excess halves every second. A 40202 that did not say what is left
/// (no `X-RateLimit-Remaining`) also sets the rate estimate: the number of
/// requests the API took in the minute before the refused one (their slots
/// are remembered) is what it allows per minute, exactly under a rolling
/// window for a client alone on its account, and less than that with other
/// clients (more, under a fixed window, by what the window before took in
/// the same minute; the next refusal corrects it). The estimate holds for a
/// minute, then grows ×1.5 a minute, so a limit raised meanwhile is found
/// again (and one that was not shows up as the next refusal). Such a
/// refusal also means nothing is left, as if it had said so, until the API
/// takes a request sent after it: the pace drops to the probes above, so a
/// window used up (a fixed one, until it starts again) costs a few
/// refusals, not one per slot. A 40202 whose headers say something is left
/// is not about the minute's budget: only the stretch applies.
#[derive(Debug)]
pub struct Pacer {
    /// `requests_per_minute` of the configuration.
    configured: f64,
    /// The last slot handed out; held by the caller at the head of the queue.
    last_slot: tokio::sync::Mutex<Option<Instant>>,
    state: Mutex<State>,
    /// Wakes the head of the queue to decide its slot again.
    news: Notify,
}

/// A send slot: when, and its place in the sequence of slots (for what is
/// left of the budget). Hand it back with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    at: Instant,
    seq: u64,
}

impl Slot {
    /// When the request may be sent.
    pub fn at(&self) -> Instant {
        self.at
    }
}

/// What an answer's rate-limit headers said: `X-RateLimit-Limit` (the
/// per-minute ceiling) and `X-RateLimit-Remaining` (what is left of it in
/// the current window). Either may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
}

#[derive(Debug)]
struct State {
    factor: f64,
    /// When the last slowdown took effect.
    slowed_at: Option<Instant>,
    /// When `factor` was last brought up to date with the time-based recovery.
    updated_at: Instant,
    /// Slots handed out so far (the next slot's `seq`).
    handed_out: u64,
    /// The latest `X-RateLimit-Limit` of each endpoint.
    announced: Vec<Announcement>,
    /// The latest `X-RateLimit-Limit` of any endpoint.
    last_announced: Option<u32>,
    /// The freshest `X-RateLimit-Remaining`: of the latest slot answered.
    remaining: Option<Remaining>,
    /// The per-minute rate the refusals showed.
    estimate: Option<Estimate>,
    /// Slots of the requests the API took (answered other than by a rate
    /// limit) in the last two minutes, oldest first.
    admitted: VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Announcement {
    endpoint: Endpoint,
    limit: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Remaining {
    left: u32,
    /// The slot of the request whose answer said it.
    seq: u64,
    at: Instant,
    /// Not said but inferred: a 40202 without headers means nothing is
    /// left, until the API takes a request sent after it.
    implied: bool,
}

#[derive(Debug, Clone, Copy)]
struct Estimate {
    per_minute: f64,
    at: Instant,
}

/// The API's limits are per minute.
const WINDOW: Duration = Duration::from_secs(60);
/// Spacing headroom over the exact rate (see the type's documentation).
const HEADROOM: f64 = 1.01;
const MAX_SLOWDOWN: f64 = 8.0;
/// Spacing factor of one slowdown, and the share of it each success undoes.
const SLOWDOWN: f64 = 1.5;
const RECOVERY: f64 = 0.95;
/// The excess of the spacing over the rate's halves in this time.
const HALF_LIFE: Duration = Duration::from_secs(1);
/// What is left of the budget below which the pace slows: at least this
/// many requests ...
const MIN_RESERVE: f64 = 2.0;
/// ... and this share of the limit.
const RESERVE_SHARE: f64 = 0.005;
/// An estimate from refusals grows by this factor a minute, after a minute.
const ESTIMATE_GROWTH: f64 = 1.5;
/// Admissions remembered for the estimate, at most (rates above this many
/// a minute are estimated low, which is safe).
const MAX_ADMITTED: usize = 1 << 16;
/// No spacing is longer than this.
const MAX_SPACING: Duration = Duration::from_secs(60);

impl State {
    /// The spacing factor now: the excess over 1 halves every [`HALF_LIFE`].
    fn factor(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated_at);
        let halvings = elapsed.as_secs_f64() / HALF_LIFE.as_secs_f64();
        self.factor = 1.0 + (self.factor - 1.0) * 0.5f64.powf(halvings);
        self.updated_at = now;
        self.factor
    }

    /// The lowest limit announced within the last minute, per minute.
    fn announced(&self, now: Instant) -> Option<f64> {
        self.announced
            .iter()
            .filter(|a| now.saturating_duration_since(a.at) < WINDOW)
            .map(|a| f64::from(a.limit))
            .min_by(f64::total_cmp)
    }

    /// The estimate from refusals, grown since, per minute.
    fn estimate(&self, now: Instant) -> Option<f64> {
        let e = self.estimate?;
        let quiet = now.saturating_duration_since(e.at);
        let growing = quiet.saturating_sub(WINDOW).as_secs_f64() / WINDOW.as_secs_f64();
        Some(e.per_minute * ESTIMATE_GROWTH.powf(growing))
    }

    /// The rate planned now, per minute.
    fn rate(&self, configured: f64, now: Instant) -> f64 {
        [self.announced(now), self.estimate(now)]
            .into_iter()
            .flatten()
            .fold(configured, f64::min)
            .max(f64::MIN_POSITIVE)
    }

    /// The spacing between two slots now.
    fn interval(&mut self, configured: f64, now: Instant) -> Duration {
        let rate = self.rate(configured, now);
        let mut spacing = 60.0 / rate * HEADROOM * self.factor(now);
        let fresh = self
            .remaining
            .filter(|r| now.saturating_duration_since(r.at) < WINDOW);
        if let Some(r) = fresh {
            let limit = self.announced(now).unwrap_or(rate);
            let reserve = (limit * RESERVE_SHARE).max(MIN_RESERVE);
            let since = self.handed_out.saturating_sub(r.seq + 1) as f64;
            let left = f64::from(r.left) - since;
            if left < reserve {
                let stretched = 60.0 / limit * HEADROOM * reserve / left.max(0.5);
                spacing = spacing.max(stretched);
            }
        }
        Duration::from_secs_f64(spacing.min(MAX_SPACING.as_secs_f64()))
    }

    /// Remembers that the API took the request sent in `slot`.
    fn admit(&mut self, slot: Slot, now: Instant) {
        let i = self.admitted.partition_point(|t| *t <= slot.at);
        self.admitted.insert(i, slot.at);
        // Taken after a refusal that implied nothing was left: there is.
        if self
            .remaining
            .is_some_and(|r| r.implied && slot.seq > r.seq)
        {
            self.remaining = None;
        }
        let horizon = now.checked_sub(WINDOW * 2);
        while self.admitted.len() > MAX_ADMITTED
            || horizon.is_some_and(|h| self.admitted.front().is_some_and(|t| *t < h))
        {
            self.admitted.pop_front();
        }
    }

    /// Requests the API took in the minute up to `at`.
    fn admitted_before(&self, at: Instant) -> usize {
        let from = at.checked_sub(WINDOW);
        let lo = from.map_or(0, |f| self.admitted.partition_point(|t| *t <= f));
        let hi = self.admitted.partition_point(|t| *t <= at);
        hi - lo
    }
}

impl Pacer {
    pub fn new(requests_per_minute: u32) -> Self {
        Self {
            configured: f64::from(requests_per_minute.max(1)),
            last_slot: tokio::sync::Mutex::new(None),
            state: Mutex::new(State {
                factor: 1.0,
                slowed_at: None,
                updated_at: Instant::now(),
                handed_out: 0,
                announced: Vec::new(),
                last_announced: None,
                remaining: None,
                estimate: None,
                admitted: VecDeque::new(),
            }),
            news: Notify::new(),
        }
    }

    /// Waits until this caller's slot and returns it; hand it back with
    /// the answer ([`Pacer::observe`], [`Pacer::on_success`], …).
    pub async fn acquire(&self) -> Slot {
        // Tokio's mutex is fair: callers take their turns in arrival order.
        let mut last_slot = self.last_slot.lock().await;
        let at = loop {
            // Registered before the slot is computed: news arriving in
            // between is not missed.
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let now = Instant::now();
            let slot = last_slot.map_or(now, |last| (last + self.interval()).max(now));
            if slot <= now {
                break slot;
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(slot) => break slot,
                () = &mut news => {}
            }
        };
        // Set only once the slot is reached: a caller cancelled while
        // waiting leaves the slot to the next one.
        *last_slot = Some(at);
        let mut state = self.lock();
        let seq = state.handed_out;
        state.handed_out += 1;
        Slot { at, seq }
    }

    /// What the rate-limit headers of the answer to the request sent in
    /// `slot` to `endpoint` said. Returns the announced limit when it is
    /// new (the first one, or another than the last).
    pub fn observe(&self, slot: Slot, endpoint: Endpoint, quota: Quota) -> Option<u32> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut changed = None;
        let limit = quota.limit.filter(|l| *l > 0);
        if let Some(limit) = limit {
            if state.last_announced != Some(limit) {
                changed = Some(limit);
            }
            state.last_announced = Some(limit);
            match state.announced.iter_mut().find(|a| a.endpoint == endpoint) {
                Some(a) => {
                    *a = Announcement {
                        endpoint,
                        limit,
                        at: now,
                    }
                }
                None => state.announced.push(Announcement {
                    endpoint,
                    limit,
                    at: now,
                }),
            }
        }
        if let Some(left) = quota.remaining {
            let left = limit.map_or(left, |l| left.min(l));
            let fresher = state
                .remaining
                .is_none_or(|r| slot.seq > r.seq || now.saturating_duration_since(r.at) >= WINDOW);
            if fresher {
                state.remaining = Some(Remaining {
                    left,
                    seq: slot.seq,
                    at: now,
                    implied: false,
                });
            }
        }
        drop(state);
        self.news.notify_waiters();
        changed
    }

    /// The request sent in `slot` succeeded: the API took it, and the
    /// stretch drifts back towards the rate.
    pub fn on_success(&self, slot: Slot) {
        let now = Instant::now();
        let mut state = self.lock();
        state.admit(slot, now);
        state.factor = (state.factor(now) * RECOVERY).max(1.0);
        drop(state);
        self.news.notify_waiters();
    }

    /// The API took the request sent in `slot` but answered it with an
    /// error (a fault, a refused task): it counts in the API's window.
    pub fn on_admitted(&self, slot: Slot) {
        let now = Instant::now();
        self.lock().admit(slot, now);
        self.news.notify_waiters();
    }

    /// The request sent in `slot` was refused with 40202 (or HTTP 429),
    /// whose headers said `quota`: slow down, and when they did not say what
    /// is left, estimate the rate the API allows from what it took.
    pub fn on_rate_limited(&self, slot: Slot, quota: Quota) {
        let now = Instant::now();
        let mut state = self.lock();
        Self::slow_down_locked(&mut state, slot.at, now);
        if quota.remaining.is_none() {
            let took = state.admitted_before(slot.at).max(1);
            state.estimate = Some(Estimate {
                per_minute: took as f64,
                at: now,
            });
            let fresher = state
                .remaining
                .is_none_or(|r| slot.seq > r.seq || now.saturating_duration_since(r.at) >= WINDOW);
            if fresher {
                state.remaining = Some(Remaining {
                    left: 0,
                    seq: slot.seq,
                    at: now,
                    implied: true,
                });
            }
        }
        drop(state);
        self.news.notify_waiters();
    }

    /// The request sent in `slot` was refused with 40209 (too many in
    /// flight): slow down.
    pub fn on_too_many_in_flight(&self, slot: Slot) {
        self.slow_down(slot.at);
    }

    /// The API said the request sent at `sent_at` was too fast: stretch the
    /// spacing, unless it was sent before the last slowdown took effect.
    pub(crate) fn slow_down(&self, sent_at: Instant) {
        let now = Instant::now();
        Self::slow_down_locked(&mut self.lock(), sent_at, now);
        self.news.notify_waiters();
    }

    fn slow_down_locked(state: &mut State, sent_at: Instant, now: Instant) {
        if state.slowed_at.is_some_and(|at| sent_at <= at) {
            return;
        }
        state.factor = (state.factor(now) * SLOWDOWN).min(MAX_SLOWDOWN);
        state.slowed_at = Some(now);
    }

    /// The current spacing between two requests.
    pub fn interval(&self) -> Duration {
        self.lock().interval(self.configured, Instant::now())
    }

    /// The rate planned now, in requests per minute: the configured one, or
    /// the announced limit or the estimate from refusals when lower (before
    /// the stretches for refusals and for what is left).
    pub fn rate(&self) -> f64 {
        self.lock().rate(self.configured, Instant::now())
    }

    /// The `X-RateLimit-Limit` the API announced last, if any.
    pub fn announced_limit(&self) -> Option<u32> {
        self.lock().last_announced
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
                    let slot = pacer.acquire().await;
                    tx.send(start.elapsed()).unwrap();
                    // Simulated request latency, longer than the spacing.
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    pacer.on_success(slot);
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
        let headers = Quota {
            limit: Some(600),
            remaining: Some(100),
        };
        for _ in 0..4 {
            pacer.on_rate_limited(sent, headers);
        }
        close(pacer.interval(), base.mul_f64(1.5));
        // A request sent after the slowdown and still refused: another one.
        // (No time passes in between, so the time-based recovery is nil.)
        pacer.slow_down(Instant::now() + Duration::from_nanos(1));
        close(pacer.interval(), base.mul_f64(2.25));
        // Seventeen clean answers undo both.
        for _ in 0..17 {
            pacer.on_success(sent);
        }
        assert_eq!(pacer.interval(), base);
        slow_to_the_floor(&pacer).await;
        close(pacer.interval(), base.mul_f64(MAX_SLOWDOWN));
        // Refusals that said something was left set no estimate.
        assert_eq!(pacer.rate(), 600.0);
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
        close(pacer.interval(), base.mul_f64(MAX_SLOWDOWN));
        let start = Instant::now();
        let first = pacer.acquire().await;
        // Ten callers queue at the slow pace ...
        let waiting: Vec<_> = (0..10)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move { pacer.acquire().await.at() - start })
            })
            .collect();
        tokio::task::yield_now().await;
        // ... and the pace recovers before the first of them is due.
        for _ in 0..100 {
            pacer.on_success(first);
        }
        assert_eq!(pacer.interval(), base);
        let mut slots = Vec::new();
        for task in waiting {
            slots.push(task.await.unwrap());
        }
        slots.sort();
        // The head of the queue decides its slot again on the news, so
        // every one of them comes at the recovered pace.
        assert_eq!(slots[0], base);
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], base);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_cancelled_in_the_queue_takes_no_slot() {
        let pacer = Pacer::new(60);
        let start = Instant::now();
        let first = pacer.acquire().await;
        // Gives up while waiting for the next slot (1.01 s away).
        let gave_up = tokio::time::timeout(Duration::from_millis(500), pacer.acquire()).await;
        assert!(gave_up.is_err());
        // The next caller gets the slot the cancelled one left.
        let next = pacer.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs_f64(1.01));
        assert_eq!((first.seq, next.seq), (0, 1));
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

    /// `a` and `b` within a microsecond (spacings are computed in `f64`).
    #[track_caller]
    fn close(a: Duration, b: Duration) {
        let d = a.abs_diff(b);
        assert!(d < Duration::from_micros(1), "{a:?} is not {b:?}");
    }

    fn quota(limit: u32, remaining: u32) -> Quota {
        Quota {
            limit: Some(limit),
            remaining: Some(remaining),
        }
    }

    /// The spacing of `rate` requests a minute with the headroom.
    fn spacing(rate: f64) -> Duration {
        Duration::from_secs_f64(60.0 / rate * HEADROOM)
    }

    #[tokio::test(start_paused = true)]
    async fn never_plans_above_the_announced_limit() {
        let pacer = Pacer::new(2000);
        close(pacer.interval(), spacing(2000.0));
        let slot = pacer.acquire().await;
        assert_eq!(
            pacer.observe(slot, Endpoint::Summary, quota(600, 599)),
            Some(600),
            "a new limit is news"
        );
        close(pacer.interval(), spacing(600.0));
        assert_eq!(pacer.rate(), 600.0);
        assert_eq!(pacer.announced_limit(), Some(600));
        assert_eq!(
            pacer.observe(slot, Endpoint::Summary, quota(600, 599)),
            None
        );
        // A limit above the configured rate changes nothing: the lowest
        // of the endpoints' limits applies.
        pacer.observe(slot, Endpoint::Backlinks, quota(5000, 4000));
        close(pacer.interval(), spacing(600.0));
        assert_eq!(pacer.announced_limit(), Some(5000));
        pacer.observe(slot, Endpoint::Summary, quota(3000, 2999));
        close(pacer.interval(), spacing(2000.0));
        pacer.observe(slot, Endpoint::Backlinks, quota(300, 299));
        close(pacer.interval(), spacing(300.0));
        // An announcement holds for a minute after it arrived.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(pacer.rate(), 300.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pacer.rate(), 2000.0);
        // A limit of 0 is no announcement.
        pacer.observe(slot, Endpoint::Summary, quota(0, 0));
        assert_eq!(pacer.announced_limit(), Some(300));
    }

    #[tokio::test(start_paused = true)]
    async fn slows_down_before_nothing_is_left() {
        // 1000 a minute: the reserve is 5 requests.
        let pacer = Pacer::new(1000);
        let base = spacing(1000.0);
        let first = pacer.acquire().await;
        pacer.observe(first, Endpoint::Summary, quota(1000, 20));
        close(pacer.interval(), base);
        // Fifteen more slots: 5 left if each was counted.
        let mut last = first;
        for _ in 0..15 {
            last = pacer.acquire().await;
        }
        close(pacer.interval(), base);
        let next = pacer.acquire().await;
        // 4 left: spaced by 5/4.
        close(pacer.interval(), base.mul_f64(5.0 / 4.0));
        for _ in 0..4 {
            pacer.acquire().await;
        }
        // Nothing left: probes at twice the reserve's worth.
        close(pacer.interval(), base.mul_f64(10.0));
        // An older answer says nothing new ...
        pacer.observe(first, Endpoint::Summary, quota(1000, 900));
        close(pacer.interval(), base.mul_f64(10.0));
        // ... a fresher one does: the window has room again.
        pacer.observe(next, Endpoint::Summary, quota(1000, 900));
        close(pacer.interval(), base);
        // So does a minute without news (the window has moved on).
        pacer.observe(last, Endpoint::Backlinks, quota(1000, 0));
        pacer.observe(pacer.acquire().await, Endpoint::Summary, quota(1000, 0));
        assert!(pacer.interval() > base.mul_f64(9.0));
        tokio::time::advance(WINDOW).await;
        close(pacer.interval(), base);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_caller_goes_as_soon_as_the_budget_is_back() {
        let pacer = Arc::new(Pacer::new(600));
        let slot = pacer.acquire().await;
        pacer.observe(slot, Endpoint::Summary, quota(600, 0));
        // Nothing left: the next slot is twice the reserve (3) of spacings
        // away.
        close(pacer.interval(), spacing(600.0).mul_f64(6.0));
        let start = Instant::now();
        let waiting = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.acquire().await.at() - start })
        };
        tokio::time::advance(Duration::from_millis(150)).await;
        // An answer to a later request: the window reset.
        let later = Slot {
            at: Instant::now(),
            seq: slot.seq + 1,
        };
        pacer.observe(later, Endpoint::Summary, quota(600, 599));
        let went = waiting.await.unwrap();
        assert_eq!(went, Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_without_headers_show_the_rate_the_api_allows() {
        let pacer = Pacer::new(2000);
        // 60 requests taken within two seconds, then a refusal.
        let mut slots = Vec::new();
        for _ in 0..61 {
            slots.push(pacer.acquire().await);
        }
        for slot in &slots[..60] {
            pacer.on_success(*slot);
        }
        pacer.on_rate_limited(slots[60], Quota::default());
        let refused_at = Instant::now();
        assert_eq!(pacer.rate(), 60.0);
        // Nothing is left until the API takes a request sent after the
        // refused one: probes, twice the reserve (2) of spacings apart.
        close(pacer.interval(), spacing(60.0).mul_f64(4.0));
        let probe = pacer.acquire().await;
        close(probe.at() - slots[60].at(), spacing(60.0).mul_f64(4.0));
        pacer.on_success(probe);
        // Taken: the pace of the estimate (the refusal's stretch has
        // faded meanwhile).
        close(pacer.interval(), spacing(60.0));
        // It holds for a minute, then grows ×1.5 a minute.
        tokio::time::advance(WINDOW - refused_at.elapsed()).await;
        assert_eq!(pacer.rate(), 60.0);
        tokio::time::advance(WINDOW).await;
        assert!((pacer.rate() - 90.0).abs() < 1e-9, "{}", pacer.rate());
        tokio::time::advance(WINDOW * 10).await;
        assert_eq!(pacer.rate(), 2000.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_implied_empty_budget_ends_with_a_later_request_taken() {
        let pacer = Pacer::new(6000);
        let mut taken = Vec::new();
        for _ in 0..10 {
            taken.push(pacer.acquire().await);
        }
        let refused = pacer.acquire().await;
        for slot in &taken {
            pacer.on_success(*slot);
        }
        pacer.on_rate_limited(refused, Quota::default());
        // Ten taken in the last minute, nothing left: probes.
        assert_eq!(pacer.rate(), 10.0);
        close(pacer.interval(), spacing(10.0).mul_f64(4.0));
        // An answer to a request sent before the refused one says nothing.
        pacer.on_success(taken[9]);
        close(pacer.interval(), spacing(10.0).mul_f64(4.0));
        // One sent after it and taken does: the refusal's stretch remains.
        let later = Slot {
            at: Instant::now(),
            seq: refused.seq + 1,
        };
        pacer.on_admitted(later);
        close(pacer.interval(), spacing(10.0).mul_f64(1.5 * RECOVERY));
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_counts_only_the_last_minute() {
        let pacer = Pacer::new(2000);
        for _ in 0..30 {
            let slot = pacer.acquire().await;
            pacer.on_success(slot);
        }
        tokio::time::advance(Duration::from_secs(40)).await;
        for _ in 0..20 {
            let slot = pacer.acquire().await;
            pacer.on_admitted(slot);
        }
        tokio::time::advance(Duration::from_secs(40)).await;
        let refused = pacer.acquire().await;
        // 80 s later only the 20 of the last minute count.
        pacer.on_rate_limited(refused, Quota::default());
        assert_eq!(pacer.rate(), 20.0);
        // With what is left in the headers, no estimate.
        let pacer = Pacer::new(2000);
        let slot = pacer.acquire().await;
        pacer.on_rate_limited(slot, quota(2000, 0));
        assert_eq!(pacer.rate(), 2000.0);
    }
}

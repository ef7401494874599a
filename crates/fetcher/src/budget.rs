//! The spend cap: no request is sent that could push the run past it.

use std::sync::Mutex;

/// A hard cap on what a run spends, in USD.
///
/// Before each attempt the fetcher reserves the attempt's estimated cost
/// ([`Budget::reserve`]); the reservation is refused when the costs the API
/// reported so far, plus the reservations of the attempts in flight, plus
/// this estimate would pass the cap. When the answer arrives the
/// reservation is released and the cost the API reported is added
/// ([`Budget::settle`]). Estimates only decide whether to send; every
/// recorded cost comes from the API.
#[derive(Debug)]
pub struct Budget {
    cap: f64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    spent: f64,
    reserved: f64,
    refused: bool,
}

/// Estimates and costs are compared with this tolerance (USD), so that
/// rounding never refuses a request that fits exactly.
const EPSILON: f64 = 1e-9;

impl Budget {
    /// A cap of `cap_usd` (> 0).
    pub fn new(cap_usd: f64) -> Self {
        Self {
            cap: cap_usd,
            state: Mutex::new(State::default()),
        }
    }

    /// The cap in USD.
    pub fn cap(&self) -> f64 {
        self.cap
    }

    /// Costs the API reported so far.
    pub fn spent(&self) -> f64 {
        self.lock().spent
    }

    /// Whether a reservation was ever refused.
    pub fn exhausted(&self) -> bool {
        self.lock().refused
    }

    /// Reserves `estimate` USD for one attempt, or refuses (`false`) when
    /// spent + in flight + `estimate` would pass the cap. A refusal is
    /// final: it marks the budget exhausted.
    pub fn reserve(&self, estimate: f64) -> bool {
        let mut state = self.lock();
        let estimate = estimate.max(0.0);
        if state.refused || state.spent + state.reserved + estimate > self.cap + EPSILON {
            state.refused = true;
            return false;
        }
        state.reserved += estimate;
        true
    }

    /// Releases a reservation of `estimate` and records the `cost` the API
    /// reported for that attempt (0 when no answer came).
    pub fn settle(&self, estimate: f64, cost: f64) {
        let mut state = self.lock();
        state.reserved = (state.reserved - estimate.max(0.0)).max(0.0);
        state.spent += cost.max(0.0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain numbers: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_pass_the_cap_counting_what_is_in_flight() {
        let budget = Budget::new(0.07);
        assert!(budget.reserve(0.02003));
        assert!(budget.reserve(0.02003));
        assert!(budget.reserve(0.02003));
        // Three in flight (0.06009): a fourth would make 0.08012.
        assert!(!budget.reserve(0.02003));
        assert!(budget.exhausted());
        // Refusal is final even after the reservations are released.
        for _ in 0..3 {
            budget.settle(0.02003, 0.02003);
        }
        assert!(!budget.reserve(0.001));
        assert!((budget.spent() - 0.06009).abs() < 1e-12);
    }

    #[test]
    fn actual_costs_replace_estimates() {
        let budget = Budget::new(0.10);
        assert!(budget.reserve(0.05));
        budget.settle(0.05, 0.01);
        assert!(budget.reserve(0.05));
        assert!(budget.reserve(0.04));
        assert!(!budget.exhausted());
        // An exact fit is not refused.
        budget.settle(0.05, 0.05);
        budget.settle(0.04, 0.04);
        assert!((budget.spent() - 0.10).abs() < 1e-12);
        assert!(budget.reserve(0.0));
    }
}

//! Fetch efficiency: how close the fetcher comes to the account's limits.
//!
//! The bound on requests per second is `min(R / 60, 30 / L)`: the
//! per-minute cap `R`, or 30 requests in flight each taking the latency
//! `L`. Each cell of the matrix runs a sandbox with latency `L` and the cap,
//! a [`Fetcher`](backlinks_fetcher::Fetcher) at `max_in_flight` 30 and
//! `requests_per_minute` `R`, and more callers than places in flight, and
//! counts the answers that completed inside a measuring window after a
//! warm-up.
//!
//! A 60 s rolling window needs runs of minutes per cell, so the sandbox's
//! window is shortened by [`WINDOW_SCALE`]: 6 s and a cap of `R / 10`, the
//! same rate. This is harsher than the real window, not kinder: the
//! pacer's 1 % headroom absorbs 1 % of the window of jitter (0.6 s at the
//! API, 60 ms here).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backlinks_fetcher::Fetcher;
use backlinks_model::Endpoint;
use backlinks_model::api::SummaryRequest;
use backlinks_sandbox::{Faults, SandboxConfig};
use tokio::time::Instant;

use crate::pages::{fetcher, sandbox};
use crate::report::{Goal, Section};
use crate::{Result, Size, per_second};

/// The sandbox's 60 s window and per-minute cap are both divided by this.
pub const WINDOW_SCALE: u32 = 10;

/// The fetcher's (and the API's) cap on requests in flight.
pub const MAX_IN_FLIGHT: u32 = 30;

/// Callers posting at once: more than the places in flight, so the fetcher
/// is what limits.
const CALLERS: usize = 2 * MAX_IN_FLIGHT as usize;

/// The goal: achieved ÷ bound.
pub const GOAL_RATIO: f64 = 0.97;

/// One cell of the matrix: latency and per-minute cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub latency: Duration,
    pub requests_per_minute: u32,
}

impl Cell {
    /// `min(R / 60, 30 / L)` in requests per second.
    pub fn bound(&self) -> f64 {
        let by_cap = f64::from(self.requests_per_minute) / 60.0;
        let by_latency = f64::from(MAX_IN_FLIGHT) / self.latency.as_secs_f64();
        by_cap.min(by_latency)
    }
}

/// What one cell achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct CellResult {
    pub cell: Cell,
    /// Successful answers per second inside the measuring window.
    pub achieved: f64,
    /// Length of the measuring window.
    pub measured: Duration,
    /// 40202 answers of the sandbox's rolling window.
    pub rate_limited: u64,
    /// 40209 answers.
    pub too_many_in_flight: u64,
    /// Requests the sandbox received in all.
    pub requests: u64,
}

impl CellResult {
    /// achieved ÷ bound.
    pub fn ratio(&self) -> f64 {
        per_second(self.achieved, self.cell.bound())
    }
}

/// The cells of a run: 3 × 3 for the report, one for `--quick`.
pub fn cells(size: Size) -> Vec<Cell> {
    let ms = Duration::from_millis;
    let (latencies, caps): (Vec<Duration>, Vec<u32>) = match size {
        Size::Quick => (vec![ms(100)], vec![2000]),
        Size::Full => (vec![ms(100), ms(500), ms(2000)], vec![600, 2000, 10_000]),
    };
    latencies
        .iter()
        .flat_map(|&latency| {
            caps.iter().map(move |&requests_per_minute| Cell {
                latency,
                requests_per_minute,
            })
        })
        .collect()
}

/// A sandbox account with the cell's latency and the scaled window.
fn account(cell: Cell) -> SandboxConfig {
    SandboxConfig {
        requests_per_minute: cell.requests_per_minute / WINDOW_SCALE,
        rate_window: Duration::from_secs(60) / WINDOW_SCALE,
        max_in_flight: MAX_IN_FLIGHT,
        latency: cell.latency,
        latency_jitter: Duration::ZERO,
        ..SandboxConfig::default()
    }
}

/// `CALLERS` tasks posting summary requests until `stop`; returns the
/// completion instants of the successful ones.
async fn drive(fetcher: Arc<Fetcher>, stop: Instant, done: Completions) {
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let (fetcher, done) = (Arc::clone(&fetcher), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let target = format!("site{caller}-{n}.example.com");
                n += 1;
                let request = SummaryRequest {
                    target: target.clone(),
                    ..SummaryRequest::default()
                };
                let exchange = fetcher.post(Endpoint::Summary, &target, 0, &request).await;
                if exchange.result.is_ok() {
                    done.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                }
            }
        }));
    }
    for task in tasks {
        // A caller that panicked only loses its own completions.
        let _ = task.await;
    }
}

/// Completion instants of successful requests, shared with the callers.
type Completions = Arc<Mutex<Vec<Instant>>>;

fn count(done: &Completions) -> usize {
    done.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Runs one cell: warm-up of `L + 1 s`, then `measure`.
pub async fn run_cell(cell: Cell, measure: Duration) -> Result<CellResult> {
    let sandbox = sandbox(account(cell)).await?;
    let fetcher = Arc::new(fetcher(
        sandbox.base_url(),
        cell.requests_per_minute,
        MAX_IN_FLIGHT,
    )?);
    let start = Instant::now();
    let from = start + cell.latency + Duration::from_secs(1);
    let until = from + measure;
    let done = Completions::default();
    drive(Arc::clone(&fetcher), until, Arc::clone(&done)).await;
    let inside = done
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|t| **t >= from && **t < until)
        .count();
    let stats = sandbox.stats();
    sandbox.shutdown().await;
    Ok(CellResult {
        cell,
        achieved: per_second(inside as f64, measure.as_secs_f64()),
        measured: measure,
        rate_limited: stats.rate_limited,
        too_many_in_flight: stats.too_many_in_flight,
        requests: stats.requests,
    })
}

/// What a 40202 storm did to the pace.
#[derive(Debug, Clone, PartialEq)]
pub struct StormResult {
    pub cell: Cell,
    /// Probability per request that a storm starts, and its length.
    pub probability: f64,
    pub storm_length: u32,
    /// Per 100 ms sample: seconds since start, successes and 40202 answers
    /// (cumulative).
    pub samples: Vec<(f64, u64, u64)>,
    /// Each storm: start (s), successes per second in its first second and
    /// in the 4 s after that, and seconds from its start until a 1 s
    /// window reached 95 % of the bound again (`None`: not in the run).
    pub storms: Vec<Storm>,
    /// 40202 answers in all (injected).
    pub rate_limited: u64,
}

/// One storm seen by the sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct Storm {
    pub start: f64,
    /// Successes per second in the 2 s before it (`None` when that falls
    /// in the warm-up).
    pub before: Option<f64>,
    pub first_second: f64,
    pub next_four: f64,
    pub recovered_after: Option<f64>,
}

const SAMPLE: Duration = Duration::from_millis(100);

/// Runs the storm benchmark: the cell's account plus injected storms.
pub async fn run_storm(
    cell: Cell,
    run: Duration,
    probability: f64,
    storm_length: u32,
) -> Result<StormResult> {
    let sandbox = sandbox(SandboxConfig {
        faults: Faults {
            rate_limit_storm: probability,
            ..Faults::default()
        },
        storm_length,
        ..account(cell)
    })
    .await?;
    let fetcher = Arc::new(fetcher(
        sandbox.base_url(),
        cell.requests_per_minute,
        MAX_IN_FLIGHT,
    )?);
    let start = Instant::now();
    let stop = start + run;
    let done = Completions::default();
    let driver = tokio::spawn(drive(Arc::clone(&fetcher), stop, Arc::clone(&done)));
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE);
    while Instant::now() < stop {
        tick.tick().await;
        samples.push((
            start.elapsed().as_secs_f64(),
            count(&done) as u64,
            fetcher.stats().rate_limited,
        ));
    }
    let _ = driver.await;
    let rate_limited = fetcher.stats().rate_limited;
    sandbox.shutdown().await;
    let warm = (cell.latency + Duration::from_secs(1)).as_secs_f64();
    Ok(analyse(
        cell,
        probability,
        storm_length,
        samples,
        warm,
        rate_limited,
    ))
}

/// Finds the storms in the samples and the pace around them.
/// Successes per second between `from` and `to` in cumulative samples.
fn rate_between(samples: &[(f64, u64, u64)], from: f64, to: f64) -> f64 {
    let ok_at = |t: f64| -> u64 {
        samples
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(0, |s| s.1)
    };
    per_second(ok_at(to) as f64 - ok_at(from) as f64, to - from)
}

fn analyse(
    cell: Cell,
    probability: f64,
    storm_length: u32,
    samples: Vec<(f64, u64, u64)>,
    warm: f64,
    rate_limited: u64,
) -> StormResult {
    let rate = |from: f64, to: f64| rate_between(&samples, from, to);
    // A storm starts at a sample whose 40202 count grew after at least
    // 1 s without growth.
    let mut starts = Vec::new();
    let mut last_growth = f64::NEG_INFINITY;
    for pair in samples.windows(2) {
        if pair[1].2 > pair[0].2 {
            if pair[1].0 - last_growth > 1.0 {
                starts.push(pair[0].0);
            }
            last_growth = pair[1].0;
        }
    }
    let end = samples.last().map_or(0.0, |s| s.0);
    let target = 0.95 * cell.bound();
    let storms = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            // Recovery counts only until the next storm starts.
            let next = starts.get(i + 1).copied().unwrap_or(f64::INFINITY);
            let recovered_after = samples
                .iter()
                .map(|s| s.0)
                .filter(|&t| t >= start + 1.0 && t <= next)
                .find(|&t| rate(t - 1.0, t) >= target)
                .map(|t| t - start);
            Storm {
                start,
                before: (start - 2.0 >= warm).then(|| rate(start - 2.0, start)),
                first_second: rate(start, (start + 1.0).min(end)),
                next_four: rate((start + 1.0).min(end), (start + 5.0).min(end)),
                recovered_after,
            }
        })
        .collect();
    StormResult {
        cell,
        probability,
        storm_length,
        samples,
        storms,
        rate_limited,
    }
}

/// Runs the matrix and the storm and renders the section.
pub async fn section(size: Size) -> Result<Section> {
    let measure = match size {
        Size::Quick => Duration::from_secs(2),
        Size::Full => Duration::from_secs(12),
    };
    let mut results = Vec::new();
    for cell in cells(size) {
        eprintln!(
            "fetch: L = {} ms, R = {}/min ...",
            cell.latency.as_millis(),
            cell.requests_per_minute
        );
        let r = run_cell(cell, measure).await?;
        eprintln!(
            "fetch:   {:.1} req/s of {:.1} ({:.1} %), 40202: {}, 40209: {}",
            r.achieved,
            cell.bound(),
            100.0 * r.ratio(),
            r.rate_limited,
            r.too_many_in_flight
        );
        results.push(r);
    }
    let storm = storm(size).await?;
    Ok(render(size, measure, &results, &storm))
}

/// The storm benchmark alone: L = 100 ms, R = 2000/min, storms drawn with
/// a fixed probability (the sandbox's draws depend on the seed and the
/// request's number only, so they start at the same requests every run).
pub async fn storm(size: Size) -> Result<StormResult> {
    let storm_cell = Cell {
        latency: Duration::from_millis(100),
        requests_per_minute: 2000,
    };
    let (run, probability, length) = match size {
        Size::Quick => (Duration::from_secs(3), 0.02, 10),
        Size::Full => (Duration::from_secs(50), STORM_PROBABILITY, 10),
    };
    eprintln!("fetch: 40202 storm ...");
    let result = run_storm(storm_cell, run, probability, length).await?;
    for s in &result.storms {
        eprintln!(
            "fetch:   storm at {:.1} s: {:.1} req/s, then {:.1}; back to 95 % after {:?} s",
            s.start, s.first_second, s.next_four, s.recovered_after
        );
    }
    Ok(result)
}

/// Probability per request that a storm starts, in the full run.
const STORM_PROBABILITY: f64 = 0.005;

fn render(size: Size, measure: Duration, results: &[CellResult], storm: &StormResult) -> Section {
    let mut body = format!(
        "Sandbox latency `L` (no jitter) and cap `R` per minute; fetcher at `max_in_flight` {MAX_IN_FLIGHT} \
         and `requests_per_minute` `R`; {CALLERS} callers posting `summary/live` tasks. \
         Bound = min(R/60, 30/L). The sandbox's rolling window is {} s with a cap of R/{WINDOW_SCALE} \
         (the same rate as R per 60 s, so each cell runs for minutes less; it leaves the pacer's 1 % \
         headroom {} ms of jitter per window instead of 600 ms). Each cell is measured over {} s \
         after a warm-up of L + 1 s; 40202/40209 count every answer of the cell's run.\n\n\
         | L | R/min | bound req/s | achieved req/s | achieved ÷ bound | 40202 | 40209 | requests |\n\
         |---|---|---|---|---|---|---|---|\n",
        60 / WINDOW_SCALE,
        600 / WINDOW_SCALE,
        measure.as_secs()
    );
    for r in results {
        let _ = writeln!(
            body,
            "| {} ms | {} | {:.1} | {:.1} | {:.1} % | {} | {} | {} |",
            r.cell.latency.as_millis(),
            r.cell.requests_per_minute,
            r.cell.bound(),
            r.achieved,
            100.0 * r.ratio(),
            r.rate_limited,
            r.too_many_in_flight,
            r.requests
        );
    }
    let timeline: Vec<String> = (0..)
        .map(|i| f64::from(i) * 2.0)
        .take_while(|t| t + 2.0 <= storm.samples.last().map_or(0.0, |s| s.0))
        .map(|t| format!("{:.0}", rate_between(&storm.samples, t, t + 2.0)))
        .collect();
    let _ = write!(
        body,
        "\n**40202 storm.** L = {} ms, R = {}/min (bound {:.1} req/s), for {:.0} s; each request \
         starts a storm with probability {} (`rate_limit_storm`), and the {} requests after it \
         also answer 40202. {} injected 40202 answers. Without storms the same account runs at {} req/s (the table above).\n\n",
        storm.cell.latency.as_millis(),
        storm.cell.requests_per_minute,
        storm.cell.bound(),
        storm.samples.last().map_or(0.0, |s| s.0),
        storm.probability,
        storm.storm_length,
        storm.rate_limited,
        results.iter().find(|r| r.cell == storm.cell).map_or(
            "(not measured)".to_owned(),
            |r| format!("{:.1}", r.achieved)
        )
    );
    let _ = write!(
        body,
        "Successful requests per second, 2 s by 2 s: {}.\n\n",
        timeline.join(" · ")
    );
    if storm.storms.is_empty() {
        body.push_str("No storm started during the run.\n");
    } else {
        body.push_str(
            "| storm at | req/s in the 2 s before | req/s in its first second | req/s in the 4 s after | back to 95 % of the bound after |\n\
             |---|---|---|---|---|\n",
        );
        for s in &storm.storms {
            let back = s
                .recovered_after
                .map_or("not before the next storm or the end".to_owned(), |t| {
                    format!("{t:.1} s")
                });
            let before = s
                .before
                .map_or("(warm-up)".to_owned(), |r| format!("{r:.1}"));
            let _ = writeln!(
                body,
                "| {:.1} s | {before} | {:.1} | {:.1} | {back} |",
                s.start, s.first_second, s.next_four
            );
        }
    }
    let mut section = Section::new(
        "Fetch efficiency",
        format!(
            "cargo run --release -p backlinks-bench -- fetch{}",
            size.flag()
        ),
        body,
    );
    let worst = results
        .iter()
        .map(CellResult::ratio)
        .fold(f64::INFINITY, f64::min);
    if !results.is_empty() {
        section.goals.push(Goal {
            what: "fetch: achieved ÷ bound, worst cell".into(),
            goal: "≥ 97 %".into(),
            measured: format!("{:.1} %", 100.0 * worst),
            met: Some(worst >= GOAL_RATIO),
        });
    }
    let refusals: u64 = results
        .iter()
        .map(|r| r.rate_limited + r.too_many_in_flight)
        .sum();
    section.goals.push(Goal {
        what: "fetch: 40202/40209 answers provoked".into(),
        goal: "0".into(),
        measured: refusals.to_string(),
        met: Some(refusals == 0),
    });
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_tighter_limit() {
        let ms = Duration::from_millis;
        let cell = |l, r| Cell {
            latency: ms(l),
            requests_per_minute: r,
        };
        assert_eq!(cell(100, 600).bound(), 10.0);
        assert_eq!(cell(500, 10_000).bound(), 60.0);
        assert_eq!(cell(2000, 2000).bound(), 15.0);
        assert_eq!(cells(Size::Full).len(), 9);
        assert_eq!(cells(Size::Quick).len(), 1);
    }

    #[test]
    fn the_scaled_account_keeps_the_rate() {
        let c = account(Cell {
            latency: Duration::from_millis(500),
            requests_per_minute: 2000,
        });
        assert_eq!(c.requests_per_minute, 200);
        assert_eq!(c.rate_window, Duration::from_secs(6));
        assert_eq!(c.max_in_flight, 30);
    }

    #[test]
    fn storms_and_recovery_are_found_in_the_samples() {
        let cell = Cell {
            latency: Duration::from_millis(100),
            requests_per_minute: 600,
        };
        // 10 ok/s for 5 s, a storm at 5 s, 2 ok/s for 2 s, then 10 ok/s.
        let mut samples = Vec::new();
        let (mut ok, mut limited) = (0u64, 0u64);
        for i in 0..120 {
            let t = f64::from(i) / 10.0;
            if (5.0..7.0).contains(&t) {
                if i % 5 == 0 {
                    ok += 1;
                }
                if i < 52 {
                    limited += 3;
                }
            } else {
                ok += 1;
            }
            samples.push((t, ok, limited));
        }
        let r = analyse(cell, 0.01, 5, samples, 1.0, limited);
        assert_eq!(r.storms.len(), 1);
        let storm = &r.storms[0];
        assert!((storm.start - 4.9).abs() < 1e-9, "{storm:?}");
        let before = storm.before.unwrap();
        assert!((before - 10.0).abs() < 0.3, "{before}");
        assert!(storm.first_second < 4.0, "{storm:?}");
        let back = storm.recovered_after.unwrap();
        assert!((2.9..=3.3).contains(&back), "{back}");
    }
}

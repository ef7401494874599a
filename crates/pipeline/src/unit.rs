//! One unit: one endpoint for one target, fetched and landed in one
//! partition. [`run_unit`] picks the driver by the endpoint's [`Paging`]:
//! one request, or pages (by offset, some requested ahead of the one being
//! landed, then by token).

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::RecordBatch;
use backlinks_fetcher::{Exchange, Fetched, Fetcher};
use backlinks_model::{Dataset, PartitionKey, RequestRecord, WorkUnit};
use backlinks_normalizer::UnknownFields;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use crate::cpu::CpuPool;
use crate::endpoints::{Answer, EndpointModule, PageRequest, PageRows, Paging, row_context};
use crate::error::{Error, Result, chain};
use crate::report::{ItemCounts, UnitStatus};
use crate::sinks::{PartitionWriter, Sinks};

/// Everything a unit needs, shared by all units of a run.
pub(crate) struct UnitContext {
    pub fetcher: Fetcher,
    pub sinks: Sinks,
    pub cpu: CpuPool,
    /// Pages of one paged target requested ahead of the one being landed
    /// (see [`PagesAhead`]).
    pub pages_ahead: usize,
}

/// What became of one unit.
pub(crate) struct UnitOutcome {
    pub unit: WorkUnit,
    /// The ledger records of the requests it sent (one per page).
    pub records: Vec<RequestRecord>,
    pub status: UnitStatus,
    pub rows: Vec<(Dataset, u64)>,
    pub unknown: UnknownFields,
    /// Items the API announced and items loaded, for paged endpoints.
    pub items: Option<ItemCounts>,
}

impl UnitOutcome {
    pub fn new(unit: WorkUnit) -> Self {
        Self {
            unit,
            records: Vec::new(),
            status: UnitStatus::NotRun,
            rows: Vec::new(),
            unknown: UnknownFields::new(),
            items: None,
        }
    }

    /// Keeps the ledger record of a request that was sent (one cancelled
    /// before its first attempt never was, and has no place in the ledger).
    fn keep(&mut self, record: RequestRecord) {
        if record.attempts > 0 || record.replayed {
            self.records.push(record);
        }
    }

    fn add_rows(&mut self, rows: &PageRows) {
        for (dataset, batch) in &rows.batches {
            let n = batch.num_rows() as u64;
            match self.rows.iter_mut().find(|(d, _)| d == dataset) {
                Some((_, total)) => *total += n,
                None => self.rows.push((*dataset, n)),
            }
        }
        for (name, n) in &rows.unknown {
            *self.unknown.entry(name.clone()).or_default() += n;
        }
    }
}

/// Fetches one unit and lands its rows.
pub(crate) async fn run_unit(
    cx: Arc<UnitContext>,
    module: Arc<dyn EndpointModule>,
    key: PartitionKey,
    unit: WorkUnit,
) -> UnitOutcome {
    let mut outcome = UnitOutcome::new(unit);
    let status = match module.paging() {
        Paging::Single => single(&cx, &module, &key, &mut outcome).await,
        Paging::Pages {
            page_size,
            max_items,
            max_offset,
        } => {
            let plan = PagePlan {
                page_size: u64::from(page_size),
                max_items,
                max_offset,
            };
            let mut ahead = PagesAhead::new(cx.pages_ahead);
            let status = paged(&cx, &module, &key, plan, &mut outcome, &mut ahead).await;
            // Pages requested ahead but not used (the target ended early,
            // failed or the run stops) were paid for: keep their records.
            for record in ahead.drain().await {
                outcome.keep(record);
            }
            status
        }
    };
    outcome.status = match status {
        Ok(status) => status,
        Err(e) => {
            let error = chain(&e);
            warn!(error = %error, "could not land the partition");
            UnitStatus::Failed(error)
        }
    };
    outcome
}

/// The answer of a request, or the unit's status when there is none.
fn answer(exchange: Exchange, outcome: &mut UnitOutcome) -> Result<Fetched, UnitStatus> {
    outcome.keep(exchange.record);
    match exchange.result {
        Err(
            backlinks_fetcher::Error::Cancelled | backlinks_fetcher::Error::BudgetExhausted { .. },
        ) => Err(UnitStatus::NotRun),
        Err(e) => Err(UnitStatus::Failed(chain(&e))),
        Ok(fetched) => Ok(fetched),
    }
}

/// Turns an answer into rows on the CPU pool.
async fn rows(
    cx: &UnitContext,
    module: &Arc<dyn EndpointModule>,
    key: &PartitionKey,
    fetched: Fetched,
    first_position: u64,
) -> Result<PageRows> {
    let (module, key) = (Arc::clone(module), key.clone());
    let first_position = i64::try_from(first_position).unwrap_or(i64::MAX);
    cx.cpu
        .run(move || {
            module.rows(&Answer {
                context: row_context(&key, &fetched),
                first_position,
                body: &fetched.body,
            })
        })
        .await?
        .map_err(|source| Error::Step {
            context: "normalizing the answer".into(),
            source,
        })
}

/// Sends the request for `page` of a target.
async fn post(
    fetcher: &Fetcher,
    module: &dyn EndpointModule,
    key: &PartitionKey,
    page_number: i64,
    page: &PageRequest,
) -> Exchange {
    let estimate = module.estimate(page.limit);
    match module.request(&key.target, page) {
        Ok(request) => {
            fetcher
                .post_with_estimate(
                    module.endpoint(),
                    key.target.as_str(),
                    page_number,
                    &request,
                    estimate,
                )
                .await
        }
        // A request that cannot be built is never sent: the fetcher turns
        // it into an answerless exchange of the same shape.
        Err(e) => {
            fetcher
                .post_with_estimate(
                    module.endpoint(),
                    key.target.as_str(),
                    page_number,
                    &Unbuildable(e.to_string()),
                    estimate,
                )
                .await
        }
    }
}

/// A request that could not be built: serializing it fails with the reason,
/// so the fetcher records the failure without sending anything.
struct Unbuildable(String);

impl serde::Serialize for Unbuildable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(&self.0))
    }
}

/// One request, one partition.
async fn single(
    cx: &UnitContext,
    module: &Arc<dyn EndpointModule>,
    key: &PartitionKey,
    outcome: &mut UnitOutcome,
) -> Result<UnitStatus> {
    let exchange = post(&cx.fetcher, module.as_ref(), key, 0, &PageRequest::SINGLE).await;
    let fetched = match answer(exchange, outcome) {
        Ok(fetched) => fetched,
        Err(status) => return Ok(status),
    };
    let rows = rows(cx, module, key, fetched, 0).await?;
    cx.sinks.write_partition(key, &rows.batches).await?;
    outcome.add_rows(&rows);
    Ok(UnitStatus::Ok)
}

/// How a paged endpoint pages for this pipeline.
#[derive(Debug, Clone, Copy)]
struct PagePlan {
    page_size: u64,
    /// Items per target at most; `None` = all of them.
    max_items: Option<u64>,
    /// The largest offset the API accepts.
    max_offset: u64,
}

impl PagePlan {
    /// Items to ask for in the page starting at item `position`: a page,
    /// or what is left under `max_items`.
    fn limit(&self, position: u64) -> u64 {
        self.max_items.map_or(self.page_size, |cap| {
            self.page_size.min(cap.saturating_sub(position))
        })
    }

    /// The items of a target to load: its `total_count`, at most
    /// `max_items`; `None` while the total is not known.
    fn items_wanted(&self, total_count: Option<u64>) -> Option<u64> {
        total_count.map(|total| self.max_items.map_or(total, |cap| cap.min(total)))
    }

    /// Where the page starting at `position` begins: by offset while the
    /// offset is allowed, then right after the previous page's token.
    fn start(
        &self,
        position: u64,
        previous_token: Option<&str>,
    ) -> std::result::Result<(u64, Option<String>), String> {
        if position <= self.max_offset {
            return Ok((position, None));
        }
        match previous_token {
            Some(token) if !token.is_empty() => Ok((0, Some(token.to_owned()))),
            _ => Err(format!(
                "the API returned no search_after_token at item {position}, past the {} items reachable by offset",
                self.max_offset
            )),
        }
    }

    /// The request of the page starting at `position` (after `token`).
    fn page(&self, position: u64, token: Option<&str>) -> std::result::Result<PageRequest, String> {
        let (offset, search_after_token) = self.start(position, token)?;
        Ok(PageRequest {
            offset,
            limit: self.limit(position),
            search_after_token,
        })
    }

    /// Up to `room` pages `(page, offset)` from `first` on, a page apart,
    /// that are addressed by offset and start before `end`.
    fn offset_pages(&self, first: (i64, u64), room: usize, end: u64) -> Vec<(i64, u64)> {
        let (page, offset) = first;
        (0..room)
            .map(|i| (page + i as i64, offset + i as u64 * self.page_size))
            .take_while(|&(_, offset)| offset <= self.max_offset && offset < end)
            .collect()
    }
}

/// Every page of one target into one partition, streamed. The pages land
/// together on commit; a page that fails for good abandons the partition
/// and the previous data of the target stays.
async fn paged(
    cx: &Arc<UnitContext>,
    module: &Arc<dyn EndpointModule>,
    key: &PartitionKey,
    plan: PagePlan,
    outcome: &mut UnitOutcome,
    ahead: &mut PagesAhead,
) -> Result<UnitStatus> {
    // The partition slot is taken before the first request, so targets
    // that cannot be written yet do not fetch either. Pages are written on
    // a task of their own, so the next page is normalized while this one
    // is encoded: one large target uses two cores.
    let mut writer =
        StreamedPartition::start(cx.sinks.begin(key, module.endpoint().datasets()).await?);
    // Rows and unknown fields count once the partition has landed.
    let mut landed = UnitOutcome::new(outcome.unit.clone());
    let mut position: u64 = 0;
    let mut token: Option<String> = None;
    let mut expected: Option<u64> = None;
    for page in 0i64.. {
        let request = match plan.page(position, token.as_deref()) {
            Ok(request) if request.limit == 0 => break,
            Ok(request) => request,
            Err(problem) => return Ok(UnitStatus::Failed(problem)),
        };
        let exchange = match ahead.take(page, &request) {
            Some(sent) => match sent.handle.await {
                Ok(exchange) => exchange,
                Err(e) => {
                    return Ok(UnitStatus::Failed(format!(
                        "page {page} (item {position}): the request task ended: {e}"
                    )));
                }
            },
            None => post(&cx.fetcher, module.as_ref(), key, page, &request).await,
        };
        let fetched = match answer(exchange, outcome) {
            Ok(fetched) => fetched,
            Err(UnitStatus::Failed(e)) if page > 0 => {
                return Ok(UnitStatus::Failed(format!(
                    "page {page} (item {position}): {e}; the pages before it were not landed"
                )));
            }
            Err(status) => return Ok(status),
        };
        let rows = rows(cx, module, key, fetched, position).await?;
        if let Some(total) = rows.total_count {
            expected = Some(total);
        }
        let want = request.limit;
        position += rows.items;
        token.clone_from(&rows.search_after_token);
        let short_page = rows.items < want;
        let all_there = expected.is_some_and(|total| position >= total);
        let cap_reached = plan.limit(position) == 0;
        let last = rows.items == 0 || short_page || all_there || cap_reached;
        // The next requests go out before this page is written, so that the
        // API works while the sinks do.
        if !last {
            match (
                plan.page(position, token.as_deref()),
                plan.items_wanted(expected),
            ) {
                (Ok(next), _) if next.search_after_token.is_some() => {
                    ahead.send_next(cx, module, key, page + 1, next);
                }
                (Ok(_), Some(end)) => ahead.fill(cx, module, key, &plan, page, position, end),
                // No total yet, or no token: the loop finds out on the next page.
                (Ok(_), None) | (Err(_), _) => {}
            }
        }
        landed.add_rows(&rows);
        debug!(page, items = rows.items, position, total = ?expected, "page sent to staging");
        writer.write(rows.batches).await?;
        if last {
            break;
        }
    }
    writer.commit().await?;
    outcome.rows = landed.rows;
    outcome.unknown = landed.unknown;
    let wanted = plan.items_wanted(expected);
    outcome.items = Some(ItemCounts {
        expected: wanted,
        loaded: position,
    });
    info!(expected = ?wanted, loaded = position, "target landed");
    Ok(UnitStatus::Ok)
}

/// A partition written by a task of its own, page by page, in order: the
/// caller goes on with the next page while this one is encoded. At most
/// one page waits. The partition lands only on [`StreamedPartition::commit`];
/// if the caller stops before (an error, the run abandoned), the task drops
/// the writer and the previous partition stays.
struct StreamedPartition {
    pages: mpsc::Sender<Staged>,
    task: tokio::task::JoinHandle<Result<()>>,
}

enum Staged {
    Page(Vec<(Dataset, RecordBatch)>),
    Commit,
}

impl StreamedPartition {
    fn start(mut writer: PartitionWriter) -> Self {
        let (pages, mut rx) = mpsc::channel::<Staged>(1);
        let task = tokio::spawn(
            async move {
                while let Some(staged) = rx.recv().await {
                    match staged {
                        Staged::Page(batches) => {
                            for (dataset, batch) in &batches {
                                writer.write(*dataset, batch).await?;
                            }
                        }
                        Staged::Commit => return writer.commit().await,
                    }
                }
                // The unit stopped before its last page: nothing lands.
                Err(Error::Step {
                    context: "the partition was abandoned before its last page".into(),
                    source: "no commit".into(),
                })
            }
            .in_current_span(),
        );
        Self { pages, task }
    }

    /// Queues a page; an error of an earlier page comes back here.
    async fn write(&mut self, batches: Vec<(Dataset, RecordBatch)>) -> Result<()> {
        if self.pages.send(Staged::Page(batches)).await.is_err() {
            // The task ended early: it failed on an earlier page.
            return self.finish().await;
        }
        Ok(())
    }

    /// Lands the partition once every queued page is written.
    async fn commit(mut self) -> Result<()> {
        if self.pages.send(Staged::Commit).await.is_err() {
            return self.finish().await;
        }
        self.finish().await
    }

    async fn finish(&mut self) -> Result<()> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(Error::Step {
                context: "the task writing the partition failed".into(),
                source: Box::new(e),
            }),
        }
    }
}

impl Drop for StreamedPartition {
    fn drop(&mut self) {
        // A unit aborted mid-way must not leave its writer running.
        if !self.task.is_finished() {
            self.task.abort();
        }
    }
}

/// Most pages of one target requested ahead of the one being landed.
pub(crate) const MAX_PAGES_AHEAD: usize = 8;

/// Requests for the next pages of one target, sent while the current page
/// is landed. Pages addressed by offset are requested up to `depth` ahead
/// (their offsets are known once the first page gave `total_count`); a page
/// past the offset range needs the token of the page before, so it is
/// requested as soon as that page is normalized, one ahead. Each request
/// is exactly the one the page loop would send (same `offset`, `limit` and
/// token), so archived answers and resume see no difference.
struct PagesAhead {
    depth: usize,
    queue: VecDeque<PageAhead>,
}

struct PageAhead {
    page: i64,
    request: PageRequest,
    handle: tokio::task::JoinHandle<Exchange>,
}

impl PagesAhead {
    fn new(depth: usize) -> Self {
        Self {
            depth,
            queue: VecDeque::new(),
        }
    }

    /// The request for `page` if it was sent ahead as `request`.
    fn take(&mut self, page: i64, request: &PageRequest) -> Option<PageAhead> {
        let front = self.queue.front()?;
        (front.page == page && front.request == *request).then(|| self.queue.pop_front())?
    }

    /// Sends `request` for `page` on a task of its own.
    fn send(
        &mut self,
        cx: &Arc<UnitContext>,
        module: &Arc<dyn EndpointModule>,
        key: &PartitionKey,
        page: i64,
        request: PageRequest,
    ) {
        let (cx, module, key) = (Arc::clone(cx), Arc::clone(module), key.clone());
        let sent = request.clone();
        let handle = tokio::spawn(
            async move { post(&cx.fetcher, module.as_ref(), &key, page, &sent).await }
                .in_current_span(),
        );
        self.queue.push_back(PageAhead {
            page,
            request,
            handle,
        });
    }

    /// Sends `request` for `page` (the page after the token of the page
    /// before, so one at a time), unless requests are already out (they
    /// come first) or none may be sent ahead.
    fn send_next(
        &mut self,
        cx: &Arc<UnitContext>,
        module: &Arc<dyn EndpointModule>,
        key: &PartitionKey,
        page: i64,
        request: PageRequest,
    ) {
        if self.depth == 0 || !self.queue.is_empty() {
            return;
        }
        self.send(cx, module, key, page, request);
    }

    /// Sends requests for the pages after `page` (which ended at item
    /// `position`) up to the depth, within the offset range and the
    /// target's `end` (its `total_count`, or `max_items` if smaller).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        cx: &Arc<UnitContext>,
        module: &Arc<dyn EndpointModule>,
        key: &PartitionKey,
        plan: &PagePlan,
        page: i64,
        position: u64,
        end: u64,
    ) {
        let first = match self.queue.back() {
            Some(last) => (last.page + 1, last.request.offset + plan.page_size),
            None => (page + 1, position),
        };
        let room = self.depth.saturating_sub(self.queue.len());
        for (next, offset) in plan.offset_pages(first, room, end) {
            let request = PageRequest {
                offset,
                limit: plan.limit(offset),
                search_after_token: None,
            };
            self.send(cx, module, key, next, request);
        }
    }

    /// Waits for the requests still out (they are paid, and their answers
    /// go to the archive) and hands back their ledger records.
    async fn drain(&mut self) -> Vec<RequestRecord> {
        let mut records = Vec::new();
        while let Some(ahead) = self.queue.pop_front() {
            if let Ok(exchange) = ahead.handle.await {
                records.push(exchange.record);
            }
        }
        records
    }
}

/// A unit's task that is aborted when dropped, so abandoning the run
/// stops its units (their partitions roll back).
pub(crate) struct UnitTask(pub tokio::task::JoinHandle<UnitOutcome>);

impl Drop for UnitTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl UnitTask {
    /// The unit's outcome; a task that panicked fails its unit.
    pub async fn outcome(mut self, unit: WorkUnit) -> UnitOutcome {
        match (&mut self.0).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let mut outcome = UnitOutcome::new(unit);
                outcome.status = if e.is_cancelled() {
                    UnitStatus::NotRun
                } else {
                    UnitStatus::Failed(format!("the unit's task failed: {e}"))
                };
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: PagePlan = PagePlan {
        page_size: 1000,
        max_items: None,
        max_offset: 20_000,
    };

    #[test]
    fn pages_go_by_offset_up_to_the_limit_then_by_token() {
        assert_eq!(PLAN.start(0, None), Ok((0, None)));
        assert_eq!(PLAN.start(19_000, Some("t19")), Ok((19_000, None)));
        // The last offset the API accepts is still used as an offset ...
        assert_eq!(PLAN.start(20_000, Some("t20")), Ok((20_000, None)));
        // ... and the next page continues from the previous page's token.
        assert_eq!(PLAN.start(20_001, Some("t20")), Ok((0, Some("t20".into()))));
        assert_eq!(PLAN.start(21_000, Some("t21")), Ok((0, Some("t21".into()))));
        let err = PLAN.start(21_000, None).unwrap_err();
        assert!(err.contains("no search_after_token at item 21000"), "{err}");
        assert!(PLAN.start(21_000, Some("")).is_err());
    }

    #[test]
    fn pages_ahead_stay_within_the_offset_range_and_the_target() {
        // After page 0 of a target of 5,500 items: pages 1 to 4, then room
        // runs out.
        assert_eq!(
            PLAN.offset_pages((1, 1000), 4, 5500),
            vec![(1, 1000), (2, 2000), (3, 3000), (4, 4000)]
        );
        // The last page starts before the end; none starts at or past it.
        assert_eq!(
            PLAN.offset_pages((4, 4000), 4, 5500),
            vec![(4, 4000), (5, 5000)]
        );
        assert_eq!(PLAN.offset_pages((5, 5000), 4, 5000), vec![]);
        // 20,000 is the last offset; the page after needs a token.
        assert_eq!(
            PLAN.offset_pages((19, 19_000), 4, 1_000_000),
            vec![(19, 19_000), (20, 20_000)]
        );
        assert_eq!(PLAN.offset_pages((1, 1000), 0, 1_000_000), vec![]);
        // Other page sizes.
        let small = PagePlan {
            page_size: 300,
            ..PLAN
        };
        assert_eq!(
            small.offset_pages((1, 300), 3, 800),
            vec![(1, 300), (2, 600)]
        );
    }

    #[test]
    fn a_page_asks_for_what_is_left_under_max_items() {
        let capped = PagePlan {
            max_items: Some(2500),
            ..PLAN
        };
        assert_eq!(PLAN.limit(5000), 1000);
        assert_eq!(capped.limit(2000), 500);
        assert_eq!(capped.limit(2500), 0);
        assert_eq!(capped.limit(3000), 0);
        assert_eq!(capped.items_wanted(Some(10_000)), Some(2500));
        assert_eq!(capped.items_wanted(Some(100)), Some(100));
        assert_eq!(capped.items_wanted(None), None);
    }
}

//! The run engine of the backlinks pipeline, as a library.
//!
//! A [`Pipeline`] takes a validated [`PipelineSpec`] (from
//! [`config::load_spec`]), the [`RunOptions`] of one run (snapshot date,
//! where answers come from — the API or the raw archive —, the Postgres
//! connection) and a [`Shutdown`] to stop it, and [`Pipeline::run`] does
//! the whole run: reads the targets, plans one unit per (endpoint,
//! target), runs every unit as a task of its own, fetches through the
//! paced fetcher (with the raw archive, resume and the spend cap), turns
//! answers into Arrow batches and encodes Parquet on a [`CpuPool`] sized
//! to the machine, lands each partition in both sinks, streams the request
//! ledger, and writes dead letters and the run manifest. It returns a
//! [`RunReport`]; an [`Error`] means the run could not start or record its
//! end, and its [`ErrorKind`] tells bad input from the rest.
//!
//! What is particular to an API endpoint lives in its module under
//! [`endpoints`] (request, paging, cost estimate, rows); the engine's core
//! knows only the [`EndpointModule`] trait.
//!
//! Every event of a run is inside a `run` span (`run_id`, `pipeline`,
//! `snapshot_date`) and every event of a unit inside a `unit` span
//! (`endpoint`, `target`).

pub mod config;
pub mod cpu;
pub mod endpoints;
mod engine;
pub mod error;
pub mod lock;
pub mod report;
pub mod sinks;
pub mod state;
pub mod targets;
mod unit;

pub use config::{PipelineSpec, RawPipeline};
pub use cpu::CpuPool;
pub use endpoints::{EndpointModule, Paging};
pub use engine::{Api, Mode, Observer, Pipeline, Quiet, RunOptions, Shutdown};
pub use error::{Error, ErrorKind, Result};
pub use report::{ItemCounts, RunReport, UnitStatus};

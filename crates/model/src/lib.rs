//! The shared vocabulary of the backlinks pipeline.
//!
//! Every stage crate depends on this one and on nothing else of ours. It holds
//! the DataForSEO request and response types ([`api`]), the classification of
//! the API's status codes ([`status`]), the grammar of filter expressions
//! ([`filter`]), the normalised [`Target`] and the [`WorkUnit`] the scheduler
//! yields, the [`PartitionKey`] the sinks replace whole, the Arrow schema of
//! every dataset ([`schema`]), the request ledger record ([`RequestRecord`])
//! and [`Secret`], a string that never prints.
//!
//! Data enters as JSON bytes (API responses) and leaves as typed structs; the
//! schemas here are the single definition of the data contract's columns.

pub mod api;
pub mod error;
pub mod filter;
pub mod ledger;
pub mod schema;
pub mod secret;
pub mod status;
pub mod target;
pub mod time;
pub mod unit;

pub use error::{Error, Result};
pub use ledger::{RequestRecord, RunRecord};
pub use schema::Dataset;
pub use secret::Secret;
pub use status::{Outcome, classify_api_status, classify_http_status};
pub use target::{Target, TargetKind};
pub use unit::{Endpoint, PartitionKey, WorkUnit};

//! # catlog-live
//!
//! The real-time popularity pipeline of CatLog, an anime catalog:
//!
//! ```text
//!  produce ──► Kafka topic ──► consume ──► PostgreSQL ──► serve ──► browser
//! ```
//!
//! A map of the crate, in pipeline order:
//!
//! The stages, each a module of its own that never imports another:
//!
//! * [`produce`] — the simulator and the producer loop.
//! * [`consume`] — partition leases, readers, and the exactly-once batch writer.
//! * [`serve`] — the live page, WebSocket feed, REST API and health.
//!
//! What they share, below them:
//!
//! * [`event`] — the wire format of one popularity event and its validation;
//!   the one place that decides what a valid event is.
//! * [`store`] — the PostgreSQL contract between the stages: history, current
//!   state, dead letters, positions; what `consume` writes and `serve`
//!   and `doctor` read.
//! * [`kafka`] — connecting to the broker, the topic, records, a log's identity.
//! * [`lag`] — how far a group is behind the broker's logs, and whether it
//!   is stalled (needs both the broker and the database).
//! * [`db`] — the connection pool, database creation, migrations, LISTEN.
//! * [`metrics`] — the process's Prometheus metrics and their route.
//! * [`catalog`] — the anime the simulator starts from (compiled in, or a user's file).
//! * [`config`] — the command line and environment (`clap`), shared by every command.
//! * [`retry`] — backoff for the loops that retry lost connections.
//! * [`shutdown`] — SIGINT/SIGTERM turned into a cancellation token.
//!
//! Above them:
//!
//! * [`pipeline`] — the one builder: the stages a command runs, wired from
//!   its settings (the tests start it the same way).
//! * [`commands`] — what each command does; [`doctor`] — the checks.
//!
//! Every long-running function takes its dependencies and a
//! [`CancellationToken`](tokio_util::sync::CancellationToken) as arguments.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod commands;
pub mod config;
pub mod consume;
pub mod db;
pub mod doctor;
pub mod event;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod pipeline;
pub mod produce;
pub mod retry;
pub mod serve;
pub mod shutdown;
pub mod store;

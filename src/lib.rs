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
//! * [`config`] — the command line and environment (`clap`), shared by every command.
//! * [`catalog`] — the anime the simulator starts from (compiled in, or a user's file).
//! * [`event`] — the wire format of one popularity event and its validation; the one
//!   place that decides what a valid event is.
//! * [`kafka`] — connecting to the broker, creating the topic, choosing a partition.
//! * [`produce`] — the simulator and the producer loop.
//! * [`db`] — the connection pool, database creation and migrations.
//! * [`doctor`] — checks of broker, topic, database, tables, lag and freshness.
//! * [`consume`] — partition leases, fetching, and the exactly-once batch writer.
//! * [`retry`] — backoff for the loops that retry lost connections.
//! * [`serve`] — the live page, WebSocket feed, REST API, health and metrics.
//! * [`shutdown`] — SIGINT/SIGTERM turned into a cancellation token.
//!
//! Every long-running function takes its dependencies and a
//! [`CancellationToken`](tokio_util::sync::CancellationToken) as arguments.

pub mod catalog;
pub mod commands;
pub mod config;
pub mod consume;
pub mod db;
pub mod doctor;
pub mod event;
pub mod kafka;
pub mod produce;
pub mod retry;
pub mod serve;
pub mod shutdown;

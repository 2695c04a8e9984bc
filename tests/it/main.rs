//! The integration tests, in one binary: the real broker, the real
//! PostgreSQL, the real binary and a real browser. Each test has its own
//! topic and its own database, so they run in parallel (`scripts/test`).

mod common;

mod browser;
mod cli;
mod compose;
mod crash_safety;
mod doctor;
mod embed;
mod faults;
mod hangs;
mod hostile;
mod monitoring;
mod offset_mirror;
mod pipeline;
mod plans;
mod postgres_tls;
mod resume_chaos;
mod retention;
mod security;
mod serve_api;
mod websocket;

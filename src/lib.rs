//! Pulseboard: business events from RabbitMQ, aggregated exactly once, pushed live to dashboards.
//!
//! # Data flow
//! ```text
//! RabbitMQ ─► ingest ─► aggregate (pure) ─► store (sqlx)        commit, then ack
//!                 │
//!                 ▼ snapshots (leader only)
//!               live::Hub ◄── live::fanout ◄── other instances (RabbitMQ fanout)
//!                 │
//!                 ▼
//!               http (snapshot, SSE, long-poll), console (WebSocket)
//! ```
//! - [`config`]: command line and environment, parsed once.
//! - [`ingest`]: consumes, decodes, dead-letters, commits batches, leads or follows.
//! - [`aggregate`]: the figures, pure and deterministic.
//! - [`store`]: SQLite or PostgreSQL; dedupe, history, lease, sequence.
//! - [`live`]: the snapshot hub and its fan-out between instances.
//! - [`http`]: routes, pages and the one JSON error type; [`auth`]: who may call what;
//!   [`console`]: the operators' WebSocket.
//! - [`metrics`], [`telemetry`], [`startup`], [`simulate`].

pub mod aggregate;
pub mod auth;
pub mod clock;
pub mod config;
pub mod console;
pub mod http;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod retry;
pub mod simulate;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod users;

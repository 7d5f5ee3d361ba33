//! Pulseboard: business events from RabbitMQ, aggregated exactly once, pushed live to dashboards.
//!
//! # Data flow
//! ```text
//!  RabbitMQ ─► ingest: decode ─► store: commit (dedupe by id) ─► ack ─► aggregate ─► live hub
//!  `<prefix>.events`   (malformed ─► `<prefix>.dead`)                   (pure)       │
//!                                                       other instances ◄─► fanout ◄─┤
//!                                                                                    ▼
//!                                     http: SSE, long-poll, snapshot, pages · console: WebSocket
//! ```
//!
//! # Layers
//! Modules are declared below in dependency order: each one uses only modules declared above
//! it, never one below (`cargo test --test layers` checks this). From the bottom:
//! - foundations: [`metrics`], `retry`, `status` (what ingest and fan-out know, one writer per
//!   fact), [`aggregate`] (the figures: pure, no I/O, no clock), `window` (sliding-window
//!   counts per key, bounded), [`clock`], `auth` (roles,
//!   passwords, tokens; no HTTP), [`config`] (command line and environment, parsed once),
//!   [`telemetry`];
//! - adapters: [`store`] (SQLite or PostgreSQL: dedupe, history, lease, sequence),
//!   [`rabbitmq`] (connections, topology, consumer, dead letters), `dlq` (peek, replay, purge
//!   of dead letters for the console);
//! - the live state: `live` (the snapshot hub and what live connections share; no
//!   transport), `control` (cluster questions, beacons, presence: types and bookkeeping);
//! - `core`: this instance's shared state (hub, connection registry, console feeds, status,
//!   metrics, the queue to the other instances), one handle shared by `Arc`, with the
//!   operations several parts perform as its methods;
//! - the tasks over the core: `fanout` (the hub between instances, over RabbitMQ),
//!   [`ingest`] (leads or follows: consume, decode, commit, acknowledge,
//!   aggregate, publish);
//! - transports over the core and their own settings (`app`): `console` (the operators'
//!   sessions), `http` (routes, pages, SSE, long-poll, the console handshake, the error
//!   shapes);
//! - commands: [`simulate`], [`users`], [`tokens`] (kiosk links), [`startup`] (wiring and
//!   ordered shutdown).
//!
//! What tests and benchmarks use is public; everything else is private to the crate, but for
//! the few store details the benchmarks' baseline shares, which go through `for_benchmarks`.

#![warn(unreachable_pub)]

// Foundations; `sync` and `window` before the others, which lock and count with them.
mod sync;
mod window;

pub mod aggregate;
mod auth;
pub mod clock;
pub mod config;
mod metrics;
mod retry;
mod status;
pub mod telemetry;

// Adapters to the outside services.

pub mod rabbitmq;
// The dead-letter queue as operators handle it (console `dlq.*`).
mod dlq;
pub mod store;

// The live state, and the same state between instances.
mod live;

// The cluster as the console sees it; carried between instances by `fanout`.
mod control;
// This instance's shared state, over everything above; every task and transport below has it.
mod core;
mod fanout;
/// How instances seal what they tell each other: public so that the black-box tests can
/// publish to `<prefix>.live` exactly as an instance (or an impostor) would.
pub use fanout::seal;

// What changes it: ingest (events).
mod ingest;

// Transports over the application state.
mod app;
mod console;
mod http;

// Commands besides serving, then the wiring of `serve`.
pub mod simulate;
pub mod tokens;
pub mod users;

pub mod startup;

/// The one door for the benchmarks, beside the public API: what their baseline (a bare
/// `INSERT` of the same rows, `benches/support`) must share with the store to be a fair floor,
/// the decoder the ingest benchmark times, and the committed-batch log line the live benchmark
/// reads back. Nothing here is for a caller of the service.
#[doc(hidden)]
pub mod for_benchmarks {
    pub use crate::ingest::batch_log::{CommittedBatch, TARGET as BATCH_LOG_TARGET};
    pub use crate::ingest::decode::{decode, DecodeContext};
    pub use crate::store::batch::signed_minor;
    pub use crate::store::postgres::SESSION as POSTGRES_SESSION;
    pub use crate::store::sqlite::PRAGMAS as SQLITE_PRAGMAS;
}

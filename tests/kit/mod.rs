//! The test kit: what the black-box tests (`tests/api`) and the benchmarks (`benches/`) share,
//! so that both start, reach, measure and clean up the service the same way.
//!
//! - [`service`]: the real `pulseboard serve` as a child process: started on a free port with
//!   its own database and names, signed in, read (HTTP, `/metrics`, its log), stopped.
//! - [`database`]: a database of the run's own (SQLite file or fresh PostgreSQL database),
//!   dropped when it ends; the backend is the library's `config::Backend`.
//! - [`disk`]: a small tmpfs of the run's own, to fill and free (a database's disk full).
//! - [`broker`]: the run's queue prefix and exchange on the shared broker, deleted when the
//!   last copy of the names is dropped, whether the run passed or not.
//! - [`metrics`]: sums over the Prometheus text of `/metrics`.
//! - [`cpu`]: readings of this machine: CPU time of the processes involved, the machine's
//!   idle floor, memory, the machine's description.
//!
//! It is source shared by several targets (`#[path]` modules), not a crate: the project keeps one
//! crate. Each target uses a part of it, which is why they declare it `allow(dead_code)`.

pub mod broker;
pub mod cpu;
pub mod database;
pub mod disk;
pub mod metrics;
pub mod raw_amqp;
pub mod service;

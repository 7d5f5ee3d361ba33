//! Black-box tests: the real binary against real RabbitMQ, PostgreSQL and SQLite.

mod cli;
mod crash;
mod demo;
mod failover;
mod helpers;
mod ingest;
mod live;
mod sse_client;
mod traffic;

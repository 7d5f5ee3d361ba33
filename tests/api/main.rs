//! Black-box tests: the real binary against real RabbitMQ, PostgreSQL and SQLite.

mod announcement_text;
mod attacks;
mod auth;
mod browser;
mod cli;
mod cluster;
mod compare;
mod console;
mod console_cluster;
mod crash;
mod database_down;
mod demo;
mod deployment;
mod disk_full;
mod failover;
mod first_use;
mod hardening;
mod helpers;
mod hostile_amqp;
mod ingest;
mod kiosk;
// The kit is shared with the benchmarks, which use other parts of it (CPU accounting).
#[allow(dead_code)]
#[path = "../kit/mod.rs"]
mod kit;
mod live;
mod live_exchange;
mod logs;
mod money;
mod observability;
mod outage;
mod private_services;
mod proxy;
mod resume;
mod revocation;
mod sse_client;
mod too_many_clients;
mod traffic;

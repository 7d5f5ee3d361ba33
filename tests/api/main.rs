//! Black-box tests: the real binary against real RabbitMQ, PostgreSQL and SQLite.

mod auth;
mod browser;
mod cli;
mod cluster;
mod crash;
mod demo;
mod deployment;
mod failover;
mod first_use;
mod hardening;
mod helpers;
mod ingest;
mod live;
mod logs;
mod money;
mod observability;
mod outage;
mod private_services;
mod proxy;
mod sse_client;
mod traffic;

//! Issue 27: PostgreSQL refusing connections (SQLSTATE 53300, "sorry, too many clients
//! already") is reported as that, not as the pool's timeout: in the start-up line when the
//! service cannot open its database, and in `/readyz` and the log when it cannot reconnect
//! later. A private cluster (`private_services`) with a tiny `max_connections` whose every
//! slot the test takes.

use crate::helpers::Service;
use crate::outage::{config_on_private_postgres, eventually, readyz, wait_until_ready};
use crate::private_services::PrivatePostgres;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// Room for the service's pool (8) and a few more; superusers (the tests connect as
/// `postgres`) get no reserved slots, so the test can take every one.
const SETTINGS: [&str; 2] = ["max_connections=12", "superuser_reserved_connections=0"];
const TOO_MANY: &str = "too many clients already (SQLSTATE 53300)";

/// Connections to the `postgres` database, opened until the server refuses the next one with
/// SQLSTATE 53300; the slots stay taken while they are held.
async fn take_every_slot(postgres: &PrivatePostgres) -> Vec<PgConnection> {
    let mut held = Vec::new();
    loop {
        match PgConnection::connect(&postgres.url("postgres")).await {
            Ok(connection) => held.push(connection),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("53300") => {
                return held;
            }
            Err(error) => panic!("connecting to the private PostgreSQL: {error}"),
        }
        assert!(held.len() <= 20, "max_connections is not in effect");
    }
}

/// Ends every session on `database` (through `via`), and waits until they are gone.
async fn end_sessions_on(via: &mut PgConnection, database: &str) {
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(database)
        .execute(&mut *via)
        .await
        .expect("pg_terminate_backend");
    for _ in 0..100 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(database)
                .fetch_one(&mut *via)
                .await
                .expect("pg_stat_activity");
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the sessions on {database} did not end");
}

fn signal(service: &Service, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &service.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal}");
}

#[tokio::test]
async fn postgres_refusing_connections_is_reported_as_too_many_clients_not_a_pool_timeout() {
    let postgres = PrivatePostgres::start_with(&SETTINGS).await;
    let (config, database, _unused, _names) =
        config_on_private_postgres(&postgres, "clients").await;

    // At start: the service cannot open its database, and its last line says why.
    let held = take_every_slot(&postgres).await;
    let refused = match Service::try_start(&config).await {
        Ok(service) => panic!("started without a connection:\n{}", service.log_text()),
        Err(error) => format!("{error:#}"),
    };
    assert!(refused.contains(TOO_MANY), "{refused}");
    assert!(!refused.contains("pool timed out"), "{refused}");
    drop(held);

    // While running: its connections end and every slot is taken before it can reconnect
    // (it is stopped meanwhile, so that it cannot take one back first).
    let service = Service::start(&config).await;
    wait_until_ready(
        &service,
        "the service becomes ready on the private PostgreSQL",
    )
    .await;
    signal(&service, "-STOP");
    let mut held = take_every_slot(&postgres).await;
    end_sessions_on(&mut held[0], &database).await;
    held.extend(take_every_slot(&postgres).await);
    signal(&service, "-CONT");
    let service = &service;
    let body = eventually(
        "/readyz says PostgreSQL has too many clients",
        || service.log_text(),
        || async {
            match readyz(service).await {
                (503, body)
                    if body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(TOO_MANY)) =>
                {
                    Ok(body)
                }
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert_eq!(body["checks"]["database"], "failing", "{body}");
    assert!(
        service.log_text().contains(TOO_MANY),
        "{}",
        service.log_text()
    );

    drop(held);
    wait_until_ready(service, "ready again once PostgreSQL has room").await;
}

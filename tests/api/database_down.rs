//! A database that does not answer is a 503 `unavailable`, not a 500 (docs/api.md, Errors):
//! the store says which of its errors mean "not now" (`StoreError::is_unavailable`), and HTTP
//! and the console both answer by it.

use crate::kit::database::PostgresServer;
use crate::outage::{eventually, ready_on_private_postgres};
use pulseboard::store::StoreError;
use sqlx::{Connection, Executor};

/// Routes that read the store on every call (a bearer token is checked without it).
const STORE_READS: [&str; 2] = [
    "/api/dashboard/history?minutes=5",
    "/api/announcements?limit=5",
];

#[tokio::test]
async fn a_stopped_database_gets_503_unavailable_from_the_api_and_then_answers_again() {
    let (postgres, _unused, _names, _broker, service) = ready_on_private_postgres("down").await;
    for path in STORE_READS {
        let (status, body) = service.get_json(path).await;
        assert_eq!(status, 200, "{path} before the outage: {body}");
    }

    postgres.stop().await;
    for path in STORE_READS {
        let response = service.get(path).await;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 503, "{path} with the database stopped: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{path}: {body}");
        assert!(retry_after.is_some(), "{path}: a Retry-After");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("database"), "{path}: {body}");
    }

    postgres.start_again().await;
    let service = &service;
    eventually(
        "the API answers again once PostgreSQL is back",
        || service.log_text(),
        || async move {
            match service.get_json(STORE_READS[0]).await {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
}

/// PostgreSQL's own word for a connection it ends (`57P01`, as at `pg_ctl stop`) reaches the
/// store's judgement through the `Any` driver the store uses, and a plain SQL error does not
/// count as the database being away.
#[tokio::test]
async fn a_connection_postgres_terminates_is_unavailable_and_a_bad_query_is_not() {
    sqlx::any::install_default_drivers();
    let url = PostgresServer::shared().url("postgres");
    let mut connection = sqlx::AnyConnection::connect(&url).await.expect("connect");
    let missing = connection
        .execute("SELECT * FROM no_such_table_here")
        .await
        .expect_err("no such table");
    let missing = StoreError::Database(missing);
    assert!(!missing.is_unavailable(), "{missing}");

    let terminated = connection
        .execute("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .expect_err("the server ends the connection");
    let terminated = StoreError::Database(terminated);
    assert!(terminated.is_unavailable(), "{terminated}");
}

//! Credentials are checked where they are used (docs/security.md, Revocation): removing a user
//! or changing their password (`pulseboard users …`, a process of its own that only writes the
//! database) closes their consoles, streams and long-polls on every instance within a couple of
//! seconds, with the reason, and refuses their tokens everywhere; a sign-out on one instance ends
//! that session's streams on the others; an expiring token ends what it opened; a command on a
//! console whose credential was revoked is never answered `ok`.

use crate::auth::{add_user, bare_client, raw_upgrade, sign_in, users_command_with_password};
use crate::console::{remove_user, Console};
use crate::console_cluster::two_instances;
use crate::helpers::{
    current_event_id, fetch_token, metric_sum, Backend, Broker, Names, Service, ServiceConfig,
    TestDatabase,
};
use crate::sse_client::SseClient;
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// How long an instance may take to notice a change made in the database by someone else: its
/// table is read every second.
const NOTICED_WITHIN: Duration = Duration::from_secs(3);

/// An SSE stream of `service` opened with a bearer token, past its opening snapshot.
async fn stream_with_token(service: &Service, token: &str) -> SseClient {
    let request = reqwest::Client::new()
        .get(service.url("/api/dashboard/stream"))
        .bearer_auth(token);
    let mut stream = SseClient::open(request).await.expect("stream");
    stream.opening().await;
    stream
}

/// Reads `stream` until it ends (within `limit`); returns its last comment.
pub(crate) async fn last_words(stream: &mut SseClient, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last_comment = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the stream did not end within {limit:?}");
        match stream.next(left).await {
            Some(block) if block.event == "comment" => last_comment = block.data,
            Some(_) => {}
            // `next` also answers `None` when its time is up: that is not an end.
            None if Instant::now() >= deadline => panic!("the stream did not end within {limit:?}"),
            None => return last_comment,
        }
    }
}

/// The status and JSON body of `POST /api/announcements` with `token`.
async fn announce_with(service: &Service, token: &str) -> (u16, Value) {
    let response = bare_client()
        .post(service.url("/api/announcements"))
        .bearer_auth(token)
        .json(&json!({"message": "still here?", "level": "info"}))
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `token` is refused with the JSON 401 on `service`, the console handshake and an
/// announcement, by `deadline` at the latest (an instance that held none of the user's
/// connections learns of the change at its next read of the users, within a second).
async fn assert_refused(service: &Service, token: &str, deadline: Instant, context: &str) {
    let handshake = loop {
        let handshake = raw_upgrade(service, &format!("?access_token={token}"), None).await;
        if handshake.starts_with("HTTP/1.1 401") {
            break handshake;
        }
        assert!(Instant::now() < deadline, "{context}: {handshake}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        handshake.contains(r#""code":"unauthorized""#),
        "{context}: {handshake}"
    );
    let (status, body) = announce_with(service, token).await;
    assert_eq!(status, 401, "{context}: {body}");
    assert_eq!(body["error"]["code"], "unauthorized", "{context}: {body}");
    assert!(body["error"]["message"].is_string(), "{context}: {body}");
}

async fn closed_count(service: &Service, transport: &str, reason: &str) -> u64 {
    let metrics = service.metrics().await.expect("metrics");
    metric_sum(
        &metrics,
        "pulseboard_connections_closed_total",
        &format!(r#"reason="{reason}",transport="{transport}""#),
    )
}

/// A long-poll of `service` with `token` that waits (after the current snapshot, for
/// something newer); its status once answered. Taken clear of the leader's next snapshot, which
/// would answer it 200 before any revocation.
async fn waiting_poll(service: &Service, token: &str) -> tokio::task::JoinHandle<u16> {
    crate::helpers::clear_of_publishing(service, Duration::from_secs(6)).await;
    let newest = current_event_id(service, token).await;
    let request = reqwest::Client::new()
        .get(service.url(&format!("/api/dashboard/poll?after={newest}&timeout=25")))
        .bearer_auth(token)
        .send();
    tokio::spawn(async move { request.await.map_or(0, |r| r.status().as_u16()) })
}

/// Two instances on one PostgreSQL database, and what a test of a change made there keeps.
struct Cluster {
    database: TestDatabase,
    _broker: Broker,
    a: Service,
    b: Service,
}

/// User `x`'s console, stream and long-poll open on instance `b` with a token from `a`;
/// `change` (a CLI command) ends all three within a couple of seconds with reason `revoked`,
/// and the token is then refused by both instances. Returns the cluster and what `change` did.
async fn a_change_in_the_database_revokes_everywhere<T>(
    change: impl FnOnce(&TestDatabase) -> T,
) -> (Cluster, T) {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let (a, b) = two_instances(&database, &names).await;
    let password = add_user(&database, "x", "operator");
    let token = fetch_token(&a.base_url, "x", &password).await;
    let mut console = Console::open(&b, &token).await;
    console.ok("ping", Value::Null).await;
    let mut stream = stream_with_token(&b, &token).await;
    let poll = waiting_poll(&b, &token).await;
    // The long-poll is waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let changed = Instant::now();
    let outcome = change(&database);
    let (code, reason) = console.close_frame().await.expect("a close frame");
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.starts_with("revoked"), "{reason}");
    let last = last_words(&mut stream, NOTICED_WITHIN).await;
    assert!(last.starts_with("closed: revoked"), "{last}");
    let status = poll.await.expect("long-poll");
    assert_eq!(status, 401, "the waiting long-poll is answered 401");
    assert!(
        changed.elapsed() < NOTICED_WITHIN,
        "closed after {:?}",
        changed.elapsed()
    );
    for transport in ["ws", "sse", "poll"] {
        assert_eq!(
            closed_count(&b, transport, "revoked").await,
            1,
            "{transport}"
        );
    }
    let deadline = changed + NOTICED_WITHIN;
    for (service, name) in [(&b, "the instance that held them"), (&a, "the other")] {
        assert_refused(service, &token, deadline, name).await;
    }
    let cluster = Cluster {
        database,
        _broker: broker,
        a,
        b,
    };
    (cluster, outcome)
}

#[tokio::test]
async fn removing_a_user_ends_their_console_stream_and_long_poll_and_refuses_their_token_everywhere(
) {
    a_change_in_the_database_revokes_everywhere(|database| remove_user(database, "x")).await;
}

#[tokio::test]
async fn a_new_password_ends_the_old_ones_connections_and_refuses_its_tokens_everywhere() {
    let (cluster, new_password) = a_change_in_the_database_revokes_everywhere(|database| {
        users_command_with_password(database, &["passwd", "x"])
    })
    .await;
    // The new password's token works at once, on either instance.
    let Cluster { a, b, database, .. } = &cluster;
    let fresh = fetch_token(&a.base_url, "x", &new_password).await;
    let mut console = Console::open(b, &fresh).await;
    console.ok("ping", Value::Null).await;
    let (status, body) = announce_with(a, &fresh).await;
    assert_eq!(status, 201, "{body}");
    // Removed and added again: a new epoch, the old tokens stay dead.
    remove_user(database, "x");
    let again = add_user(database, "x", "operator");
    let newest = fetch_token(&b.base_url, "x", &again).await;
    assert_eq!(announce_with(a, &newest).await.0, 201);
    assert_refused(a, &fresh, Instant::now() + NOTICED_WITHIN, "before removal").await;
}

#[tokio::test]
async fn signing_out_on_one_instance_ends_that_sessions_stream_on_the_other() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "out-a");
    config
        .env
        .push(("PULSEBOARD_HEARTBEAT_SECS".into(), "1".into()));
    let a = Service::start(&config).await;
    config.node = "out-b".into();
    let b = Service::start(&config).await;
    // A follower has snapshots only through the fan-out: once both have one, both links are up.
    for service in [&a, &b] {
        service
            .wait_for_snapshot(Duration::from_secs(15), |s| {
                s["ingest"]["leader"].is_string()
            })
            .await;
    }
    let password = database.admin_password.as_str();
    let leaving = sign_in(&a, "admin", password).await;
    let staying = sign_in(&a, "admin", password).await;
    let cookie_stream = |cookie: &str| {
        reqwest::Client::new()
            .get(b.url("/api/dashboard/stream"))
            .header(COOKIE, format!("pulseboard_session={cookie}"))
    };
    let mut signed_out = SseClient::open(cookie_stream(&leaving.cookie))
        .await
        .expect("stream");
    signed_out.opening().await;
    let mut other = SseClient::open(cookie_stream(&staying.cookie))
        .await
        .expect("stream");
    other.opening().await;
    let response = bare_client()
        .post(a.url("/logout"))
        .header(COOKIE, format!("pulseboard_session={}", leaving.cookie))
        .form(&[("csrf", leaving.csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    assert_eq!(response.status(), 303);
    let signed_out_at = Instant::now();
    let last = last_words(&mut signed_out, NOTICED_WITHIN).await;
    assert!(last.starts_with("closed: revoked"), "{last}");
    assert!(signed_out_at.elapsed() < NOTICED_WITHIN);
    assert_eq!(closed_count(&b, "sse", "revoked").await, 1);
    // Only that session's: the other one's stream goes on (a heartbeat a second).
    other.next_of("comment", Duration::from_secs(3)).await;
    let status = cookie_stream(&leaving.cookie)
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(status, 401, "the signed-out session on the other instance");
}

#[tokio::test]
async fn a_token_that_expires_ends_its_stream_and_its_console() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "exp-1");
    config
        .env
        .push(("PULSEBOARD_TOKEN_TTL_SECS".into(), "4".into()));
    let service = Service::start(&config).await;
    let answer: Value = reqwest::Client::new()
        .post(service.url("/api/auth/token"))
        .json(&json!({"username": "admin", "password": database.admin_password}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["expires_in"], 4, "{answer}");
    let token = answer["access_token"].as_str().expect("token").to_owned();
    let issued = Instant::now();
    let mut console = Console::open(&service, &token).await;
    let mut stream = stream_with_token(&service, &token).await;

    let (code, reason) = console.close_frame().await.expect("a close frame");
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.starts_with("expired"), "{reason}");
    let last = last_words(&mut stream, Duration::from_secs(8)).await;
    assert!(last.starts_with("closed: expired"), "{last}");
    let lived = issued.elapsed();
    assert!(
        lived > Duration::from_secs(2) && lived < Duration::from_secs(8),
        "ended after {lived:?}"
    );
    assert_eq!(closed_count(&service, "ws", "expired").await, 1);
    assert_eq!(closed_count(&service, "sse", "expired").await, 1);
    // Expired is expired at once: no table involved.
    assert_refused(&service, &token, Instant::now(), "expired").await;
}

#[tokio::test]
async fn a_command_on_a_console_whose_credential_was_revoked_gets_no_ok_reply() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "cmd-1")).await;
    let password = add_user(&database, "x", "operator");
    let token = fetch_token(&service.base_url, "x", &password).await;
    let mut console = Console::open(&service, &token).await;
    console.ok("audit.tail", json!({"limit": 5})).await;

    remove_user(&database, "x");
    // At once, before the instance's table has caught up, most of the time: the command is
    // checked against the database, refused, and the console closed.
    let id = console.send("audit.tail", json!({"limit": 5})).await;
    // `None`: closed before the command arrived, so no answer at all.
    if let Some(answer) = console.answer_unless_closed(&id).await {
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
        let (code, reason) = console
            .close_frame()
            .await
            .expect("closed after the refusal");
        assert_eq!(code, CloseCode::Policy, "{reason}");
        assert!(reason.starts_with("revoked"), "{reason}");
    }
}

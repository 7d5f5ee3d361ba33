//! Resume ids the service does not know (docs/api.md, Resume ids), over real sockets: an id
//! "from the future" (made up, or kept by a client across a database restore) on the stream
//! (`Last-Event-ID`, `?lastEventId=`) and on the long-poll (`after`) gets everything kept, then
//! the current snapshot, at once — never a wait for ids that will not come; and the first
//! long-poll without `after` answers the current state with an id that brings only what is
//! newer.

use crate::helpers::{
    clear_of_publishing, Backend, Broker, Names, Service, ServiceConfig, TestDatabase,
};
use crate::sse_client::SseClient;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const STREAM: &str = "/api/dashboard/stream";

/// A service on a SQLite database and broker names of its own, ingesting, with two
/// announcements stored.
async fn start_with_announcements(node: &str) -> (TestDatabase, Broker, Service) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, node)).await;
    service.wait_until_ingesting(Duration::from_secs(15)).await;
    for message in ["kept one", "kept two"] {
        announce(&service, message).await;
    }
    (database, broker, service)
}

async fn announce(service: &Service, message: &str) -> Value {
    let response = service
        .client()
        .post(service.url("/api/announcements"))
        .json(&json!({"message": message, "level": "info"}))
        .send()
        .await
        .expect("POST /api/announcements");
    assert_eq!(response.status(), 201);
    response.json().await.expect("announcement")
}

#[tokio::test]
async fn a_stream_resumed_from_the_future_replays_what_is_kept_then_the_snapshot_and_goes_on() {
    let (_database, _broker, service) = start_with_announcements("resume-sse").await;
    let mut header = SseClient::connect(&service, STREAM, Some("999999-1")).await;
    let (replayed, snapshot) = header.opening().await;
    assert_eq!(
        replayed,
        ["kept one", "kept two"],
        "{}",
        service.log_tail(10)
    );
    assert!(snapshot["seq"].is_i64());
    let mut query = SseClient::connect(
        &service,
        &format!("{STREAM}?lastEventId=999999-999999999"),
        None,
    )
    .await;
    let (replayed, _) = query.opening().await;
    assert_eq!(replayed, ["kept one", "kept two"]);

    // Later announcements are not taken for ones the client already has.
    announce(&service, "after the resume").await;
    for client in [&mut header, &mut query] {
        let next = client
            .next_of("announcement", Duration::from_secs(5))
            .await
            .json();
        assert_eq!(next["message"], "after the resume");
    }
}

/// `GET /api/dashboard/poll?after=…&timeout=…`: the answer and how long it took.
async fn poll(service: &Service, query: &str) -> (Value, Duration) {
    let started = Instant::now();
    let (status, body) = service
        .get_json(&format!("/api/dashboard/poll?{query}"))
        .await;
    assert_eq!(status, 200, "{body}");
    (body, started.elapsed())
}

fn kinds_and_messages(body: &Value) -> Vec<(String, String)> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["data"]["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_long_poll_after_an_id_from_the_future_answers_at_once_with_what_is_kept() {
    let (_database, _broker, service) = start_with_announcements("resume-poll").await;
    let (first, _) = poll(&service, "timeout=1").await;
    let current = first["events"][0]["id"].as_str().expect("id").to_owned();
    let (announcement, _) = current.split_once('-').expect("an id");
    let expected = vec![
        ("announcement".to_owned(), "kept one".to_owned()),
        ("announcement".to_owned(), "kept two".to_owned()),
        ("snapshot".to_owned(), String::new()),
    ];
    // Made up; and a seq ahead of the store's, as after a database restore.
    for after in [
        "999999-999999".to_owned(),
        format!("{announcement}-999999999"),
    ] {
        // "Waits for news" holds only while the leader publishes nothing: a new minute or an
        // idle step would.
        clear_of_publishing(&service, Duration::from_secs(4)).await;
        let (body, took) = poll(&service, &format!("after={after}&timeout=5")).await;
        assert!(
            took < Duration::from_secs(2),
            "after={after}: waited {took:?}"
        );
        assert_eq!(kinds_and_messages(&body), expected, "after={after}: {body}");
        // Its last id is one the service knows: polling after it waits for news.
        let last = body["events"][2]["id"].as_str().expect("id");
        let (again, _) = poll(&service, &format!("after={last}&timeout=1")).await;
        assert_eq!(again["events"], json!([]), "{again}");
    }
}

#[tokio::test]
async fn the_first_long_poll_answers_the_current_state_with_an_id_that_brings_only_news() {
    let (_database, _broker, service) = start_with_announcements("first-poll").await;
    // The snapshot stays the same from here (nothing is published): a new minute or an idle
    // step would make the leader publish one.
    clear_of_publishing(&service, Duration::from_secs(5)).await;
    announce(&service, "since the last snapshot").await;

    let (first, took) = poll(&service, "timeout=5").await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let events = first["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!(events[0]["event"], "snapshot");
    let id = events[0]["id"].as_str().expect("id").to_owned();

    // Nothing is newer than the current state: no announcement is replayed as new.
    let (quiet, _) = poll(&service, &format!("after={id}&timeout=2")).await;
    assert_eq!(quiet["events"], json!([]), "after={id}: {quiet}");

    let waiting = {
        let url = service.url(&format!("/api/dashboard/poll?after={id}&timeout=10"));
        let client = service.client().clone();
        tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .expect("poll")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    announce(&service, "news").await;
    let news = waiting.await.expect("poll task");
    assert_eq!(
        kinds_and_messages(&news)[0],
        ("announcement".to_owned(), "news".to_owned()),
        "{news}"
    );
}

//! Issue 23, log forging: text from outside (a user name at sign-in, a routing key and a currency
//! from the broker) reaches the real binary's log over real sockets, in both log formats, and
//! cannot make a line of its own, move the cursor or colour the terminal.

use crate::helpers::{event, Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a forged line would start with; real lines of today never carry this second.
const FORGED_TIMESTAMP: &str = "2026-12-02T00:00:00";

/// A user name that, written raw, would end its line, start a genuine-looking one and then turn
/// the terminal red.
const FORGED_USER: &str = "mallory\n2026-12-02T00:00:00.000000Z  INFO pulseboard: forged\u{1b}[31m";

/// The queue binds `order.*`: a topic word ends only at a dot, so this key (no dot after the
/// first) still routes, newline, escape and all.
const FORGED_ROUTING_KEY: &str = "order.x\n2026-12-02T00:00:00Z  INFO pulseboard: forged\u{1b}[31m";

/// A currency the service does not count: the rejection reason quotes it.
const FORGED_CURRENCY: &str = "EUR\r\n2026-12-02T00:00:00Z  WARN pulseboard: forged\u{0}\u{1b}[2J";

const LOGGED_LIMIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn text_log_writes_outside_text_escaped_on_one_line() {
    let (service, _broker, _database) = start_and_forge("logs-text", &[]).await;
    let log = service.log_text();

    assert_no_forged_line_or_control_character(&log);
    // The values are there, escaped (so the test sees them, and would see a raw one).
    for escaped in [
        "user=mallory\\n2026-12-02T00:00:00.000000Z  INFO pulseboard: forged\\u{1b}[31m",
        "routing_key=order.x\\n2026-12-02T00:00:00Z  INFO pulseboard: forged\\u{1b}[31m",
        "EUR\\r\\n2026-12-02T00:00:00Z  WARN pulseboard: forged\\u{0}\\u{1b}[2J",
    ] {
        assert!(
            log.contains(escaped),
            "{escaped:?} is not in the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn json_log_is_one_object_a_line_that_gives_back_the_outside_text() {
    let json = [("PULSEBOARD_LOG_FORMAT".to_owned(), "json".to_owned())];
    let (service, _broker, _database) = start_and_forge("logs-json", &json).await;
    let log = service.log_text();

    assert_no_forged_line_or_control_character(&log);
    let objects: Vec<Value> = log
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(object @ Value::Object(_)) => object,
            _ => panic!("not one JSON object: {line:?}"),
        })
        .collect();
    let refused = with_message(&objects, "refused a token request");
    assert_eq!(refused["user"], FORGED_USER, "the user name, exactly");
    let dead = with_message(&objects, "dead-lettering a malformed event");
    assert_eq!(dead["routing_key"], FORGED_ROUTING_KEY, "the routing key");
    let reason = dead["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(FORGED_CURRENCY), "the currency: {reason:?}");
}

/// actix-http logs every malformed request at ERROR (`stream error: request parse error: …`);
/// by default those stay out of the log, and an operator who names the target gets them back.
#[tokio::test]
async fn malformed_requests_stay_out_of_the_log_unless_asked_for() {
    let (asked_database, quiet_database) = (
        TestDatabase::new(Backend::Sqlite).await,
        TestDatabase::new(Backend::Sqlite).await,
    );
    let mut asked = ServiceConfig::new(&asked_database, &Names::new(), "logs-parser-asked");
    asked
        .env
        .push(("RUST_LOG".into(), "info,actix_http=error".into()));
    let asked = Service::start(&asked).await;
    let quiet = ServiceConfig::new(&quiet_database, &Names::new(), "logs-parser-quiet");
    let quiet = Service::start(&quiet).await;

    for service in [&asked, &quiet] {
        for _ in 0..3 {
            send_malformed_request(service).await;
        }
    }
    // Proves the requests do make actix-http log, so that silence below means something.
    wait_for_log(&asked, &["actix_http::h1::dispatcher", "stream error"]).await;
    // The same time for the default service to log, had it been going to.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = quiet.log_text();
    assert!(log.contains("listening on"), "the log was captured:\n{log}");
    assert!(
        !log.contains("actix_http::h1::dispatcher") && !log.contains("stream error"),
        "a malformed request was logged by default:\n{log}"
    );
}

/// Sends bytes that are not HTTP over a raw socket; the answer is a 400 and a closed connection.
async fn send_malformed_request(service: &Service) {
    let address = service.base_url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    socket
        .write_all(b"NOT HTTP\x01\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the server closes the connection"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 "),
        "a malformed request gets a 400: {answer:?}"
    );
}

/// Starts a service, then sends a forged user name over HTTP and a forged dead letter over the
/// broker, and waits until both are logged.
async fn start_and_forge(node: &str, env: &[(String, String)]) -> (Service, Broker, TestDatabase) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, node);
    config.env.extend(env.iter().cloned());
    let service = Service::start(&config).await;

    let response = reqwest::Client::new()
        .post(service.url("/api/auth/token"))
        .json(&serde_json::json!({"username": FORGED_USER, "password": "wrong password"}))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 401, "a bad sign-in is refused as usual");

    let mut body: Value =
        serde_json::from_slice(&event("forged-1", "order.placed", 1, "u1", Some(100)))
            .expect("event body");
    body["data"]["currency"] = Value::from(FORGED_CURRENCY);
    broker
        .publish_all(&[(FORGED_ROUTING_KEY.to_owned(), body.to_string().into_bytes())])
        .await;

    wait_for_log(
        &service,
        &[
            "refused a token request",
            "dead-lettering a malformed event",
        ],
    )
    .await;
    (service, broker, database)
}

async fn wait_for_log(service: &Service, messages: &[&str]) {
    let started = Instant::now();
    while !messages.iter().all(|m| service.log_text().contains(m)) {
        assert!(
            started.elapsed() < LOGGED_LIMIT,
            "not all of {messages:?} logged within {LOGGED_LIMIT:?}:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_forged_line_or_control_character(log: &str) {
    for line in log.lines() {
        assert!(
            !line.starts_with(FORGED_TIMESTAMP),
            "a forged line made it into the log: {line:?}"
        );
        // Standard error is a pipe here, so the formatter adds no colours of its own either.
        assert!(
            !line.chars().any(char::is_control),
            "a raw control character in the log: {line:?}"
        );
    }
}

fn with_message<'a>(objects: &'a [Value], message: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} in the log: {objects:?}"))
}

/// A request's id comes back in `X-Request-Id` and is on every log line the request causes, in
/// JSON as in text; a request without one (or with one that is not plain) gets a new one.
#[tokio::test]
async fn a_request_id_is_echoed_and_carried_by_the_requests_log_lines() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let mut config = ServiceConfig::new(&database, &names, "logs-request-id");
    config
        .env
        .push(("PULSEBOARD_LOG_FORMAT".to_owned(), "json".to_owned()));
    let service = Service::start(&config).await;

    let refused = reqwest::Client::new()
        .post(service.url("/api/auth/token"))
        .header("X-Request-Id", "abc-123")
        .json(&serde_json::json!({"username": "nobody-abc", "password": "wrong password"}))
        .send()
        .await
        .expect("token request");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-request-id"], "abc-123");
    wait_for_log(&service, &["nobody-abc"]).await;
    let objects: Vec<Value> = service
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let line = with_message(&objects, "refused a token request");
    assert_eq!(line["user"], "nobody-abc");
    assert_eq!(line["span"]["name"], "request", "{line}");
    assert_eq!(line["span"]["request_id"], "abc-123", "{line}");
    assert_eq!(line["span"]["route"], "/api/auth/token", "{line}");
    assert_eq!(line["span"]["method"], "POST", "{line}");

    for (sent, kept) in [
        (None, false),
        (Some("not plain!"), false),
        (Some("r-1.2:3_x"), true),
    ] {
        let mut request = service.client().get(service.url("/healthz"));
        if let Some(id) = sent {
            request = request.header("X-Request-Id", id);
        }
        let response = request.send().await.expect("healthz");
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert_eq!(Some(echoed.as_str()) == sent, kept, "{sent:?} → {echoed}");
        assert!(!echoed.is_empty());
    }
}

/// Issue 20, tracing: an ingest batch and console commands (run apart, answered on the spot,
/// refused) each log in a span of their own, with its fields, in JSON.
#[tokio::test]
async fn ingest_batches_and_console_commands_log_in_spans_of_their_own() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "logs-spans");
    config.env.extend(
        [
            ("PULSEBOARD_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,pulseboard=debug"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let service = Service::start(&config).await;
    service.wait_until_ingesting(Duration::from_secs(15)).await;
    let order = |id: &str| {
        (
            "order.placed".to_owned(),
            event(id, "order.placed", 1, "u1", Some(100)),
        )
    };
    broker
        .publish_all(&[
            order("span-1"),
            order("span-2"),
            order("span-1"),
            ("order.placed".to_owned(), b"{not json".to_vec()),
        ])
        .await;
    let mut console = crate::console::Console::open(&service, service.token()).await;
    console.ok("ping", serde_json::json!({})).await;
    console.ok("status", serde_json::json!({})).await;
    console.refused("no.such", serde_json::json!({})).await;
    let health = service.client().get(service.url("/healthz")).send().await;
    assert_eq!(health.expect("healthz").status(), 200);
    wait_for_log(
        &service,
        &["command answered", "command refused", "request finished"],
    )
    .await;
    // The four messages may come in one batch or several; each batch logs one line at its end.
    let ended = ["batch applied", "batch acknowledged: nothing to commit"];
    let started = Instant::now();
    let (objects, batches) = loop {
        let objects: Vec<Value> = service
            .log_text()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let batches: Vec<Value> = objects
            .iter()
            .filter(|o| ended.iter().any(|m| o["message"] == *m))
            .cloned()
            .collect();
        let messages: u64 = batches
            .iter()
            .filter_map(|o| o["span"]["messages"].as_u64())
            .sum();
        if messages >= 4 {
            break (objects, batches);
        }
        assert!(started.elapsed() < LOGGED_LIMIT, "{batches:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let total = |field: &str| -> u64 {
        batches
            .iter()
            .map(|o| {
                o["span"][field]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{field}: {o}"))
            })
            .sum()
    };
    let applied: Vec<&Value> = batches
        .iter()
        .filter(|o| o["message"] == "batch applied")
        .collect();
    assert!(
        batches.iter().all(|o| o["span"]["name"] == "batch"),
        "{batches:?}"
    );
    assert!(
        applied.iter().all(|o| o["span"]["commit_ms"].is_number()),
        "{applied:?}"
    );
    // One batch within the linger, or several if the broker handed them over apart.
    assert_eq!(total("messages"), 4, "{batches:?}");
    assert_eq!(total("new"), 2, "{batches:?}");
    assert_eq!(total("duplicates"), 1, "{batches:?}");
    assert_eq!(total("rejected"), 1, "{batches:?}");

    let command = |name: &str| {
        objects
            .iter()
            .find(|o| o["span"]["name"] == "console_command" && o["span"]["command"] == name)
            .unwrap_or_else(|| panic!("no line in the span of {name}: {objects:?}"))
    };
    let ping = command("ping");
    assert_eq!(ping["message"], "command answered", "{ping}");
    assert_eq!(ping["span"]["outcome"], "ok", "{ping}");
    assert_eq!(ping["span"]["user"], "admin", "{ping}");
    assert_eq!(command("status")["span"]["user"], "admin");
    let unknown = command("unknown");
    assert_eq!(unknown["message"], "command refused", "{unknown}");
    assert_eq!(unknown["span"]["outcome"], "unknown_command", "{unknown}");

    // And the request span closes with its status and duration.
    let finished = objects
        .iter()
        .find(|o| o["message"] == "request finished" && o["span"]["route"] == "/healthz")
        .unwrap_or_else(|| panic!("no finished /healthz request: {objects:?}"));
    assert_eq!(finished["span"]["name"], "request", "{finished}");
    assert_eq!(finished["span"]["status"], 200, "{finished}");
    assert!(finished["span"]["ms"].is_number(), "{finished}");
}

/// A start against a reachable broker and database logs nothing at ERROR (the client used to
/// report the start-up check's channel, closed with its connection, as a connection error).
#[tokio::test]
async fn a_clean_start_logs_no_error() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let service = Service::start(&ServiceConfig::new(&database, &names, "clean-1")).await;
    service.wait_until_ingesting(Duration::from_secs(20)).await;
    let log = service.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

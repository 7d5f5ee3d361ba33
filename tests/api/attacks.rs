//! HTTP-side hardening (issue 27) over real sockets against the real binary: compressed request
//! bodies are refused before anything inflates them, sign-in throttling cannot be turned against
//! the real user and password hashing has a ceiling, forced refreshes keep to the snapshot tick,
//! a long URI gets 414, and an HTTP/1.0 client gets its stream without chunked encoding.

use crate::auth::add_user;
use crate::hardening::{address, raw_exchange};
use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};
use crate::kit::cpu::resident_kib;
use crate::sse_client::SseClient;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Follows no redirect, keeps no cookie, gives up after 30 s (hashing under load is slow in a
/// debug build).
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A zlib stream (HTTP's `deflate`) of `inflated` zero bytes: about a thousandth of that.
fn deflate_bomb(inflated: usize) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..inflated / zeros.len() {
        encoder.write_all(&zeros).expect("compress");
    }
    encoder.finish().expect("compress")
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("compress");
    encoder.finish().expect("compress")
}

/// A bomb that fits under the 64 KiB body limit and inflates to 60 MiB.
fn bomb() -> Vec<u8> {
    let bomb = deflate_bomb(60 << 20);
    assert!(bomb.len() < 64 * 1024, "the bomb is {} bytes", bomb.len());
    bomb
}

/// Posts `body` with `Content-Encoding: encoding` as JSON; (status, headers, body).
async fn post_encoded(
    service: &Service,
    path: &str,
    encoding: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = encoded(service, path, encoding, body, token)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn encoded(
    service: &Service,
    path: &str,
    encoding: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = bare_client()
        .post(service.url(path))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", encoding)
        .body(body);
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The highest resident memory (KiB) of `pid` seen every 5 ms until `done` is set.
fn watch_peak(pid: u32, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(resident_kib(pid));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak.max(resident_kib(pid))
    })
}

#[tokio::test]
async fn compressed_request_bodies_get_415_on_every_route_and_identity_still_passes() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "enc-1")).await;
    let credentials = json!({"username": "admin", "password": database.admin_password});
    let announcement = json!({"message": "hello", "level": "info"});
    let cases = [
        ("/api/auth/token", "deflate", bomb(), None),
        (
            "/api/auth/token",
            "gzip",
            gzip(credentials.to_string().as_bytes()),
            None,
        ),
        (
            "/api/auth/token",
            "br",
            credentials.to_string().into_bytes(),
            None,
        ),
        (
            "/api/announcements",
            "deflate",
            bomb(),
            Some(service.token()),
        ),
        (
            "/api/announcements",
            "gzip",
            gzip(announcement.to_string().as_bytes()),
            Some(service.token()),
        ),
        (
            "/api/announcements",
            "identity, gzip",
            gzip(announcement.to_string().as_bytes()),
            Some(service.token()),
        ),
    ];
    for (path, encoding, body, token) in cases {
        let (status, headers, error) = post_encoded(&service, path, encoding, body, token).await;
        assert_eq!(status, 415, "{path} {encoding}: {error}");
        assert_eq!(
            error["error"]["code"], "unsupported_media_type",
            "{path} {encoding}"
        );
        assert!(error["error"]["message"].is_string(), "{error}");
        assert_eq!(headers["accept-encoding"], "identity", "{path} {encoding}");
        assert!(
            headers.contains_key("content-security-policy"),
            "the refusal carries the security headers"
        );
    }

    // `identity` is no encoding at all: the body is read as it is.
    let (status, _, token) = post_encoded(
        &service,
        "/api/auth/token",
        "identity",
        credentials.to_string().into_bytes(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let (status, _, created) = post_encoded(
        &service,
        "/api/announcements",
        "identity",
        announcement.to_string().into_bytes(),
        Some(service.token()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
}

#[tokio::test]
async fn a_hundred_concurrent_deflate_bombs_leave_resident_memory_where_it_was() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "enc-2")).await;
    // Warm up what every request touches once (buffers, the blocking pool).
    let (status, _, _) = post_encoded(&service, "/api/auth/token", "deflate", bomb(), None).await;
    let before = resident_kib(service.pid());
    let done = Arc::new(AtomicBool::new(false));
    let peak = watch_peak(service.pid(), done.clone());

    let bomb = bomb();
    let attacks = (0..100).map(|_| {
        let body = bomb.clone();
        let service = &service;
        let request = encoded(service, "/api/auth/token", "deflate", body, None);
        // A request that fails (times out under the load) counts as status 0.
        async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
    });
    let statuses = futures_util::future::join_all(attacks).await;
    done.store(true, Ordering::Relaxed);
    let peak = peak.await.expect("watcher");
    let after = resident_kib(service.pid());

    eprintln!(
        "resident memory: {before} KiB before, peak {peak} KiB, {after} KiB after 100 bombs \
         (first answer {status})"
    );
    assert!(
        statuses.iter().all(|&s| s == 415),
        "every bomb is refused: {statuses:?}"
    );
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "resident memory grew by {grown} KiB (from {before} KiB to a peak of {peak} KiB)"
    );
}

/// `POST /api/auth/token` for `user` from the forwarded address `from`: (status, body).
async fn token_from(service: &Service, from: &str, user: &str, password: &str) -> (u16, Value) {
    try_token_from(service, from, user, password)
        .await
        .expect("token request")
}

async fn try_token_from(
    service: &Service,
    from: &str,
    user: &str,
    password: &str,
) -> reqwest::Result<(u16, Value)> {
    let response = bare_client()
        .post(service.url("/api/auth/token"))
        .header("X-Forwarded-For", from)
        .json(&json!({"username": user, "password": password}))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

fn behind_trusted_proxy(database: &TestDatabase, node: &str) -> ServiceConfig {
    let mut config = ServiceConfig::new(database, &Names::new(), node);
    config
        .env
        .push(("PULSEBOARD_TRUST_PROXY".into(), "true".into()));
    config
}

#[tokio::test]
async fn wrong_passwords_from_one_address_never_lock_the_user_out_of_another() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&behind_trusted_proxy(&database, "lockout-1")).await;
    let right = database.admin_password.as_str();
    let attacker = "203.0.113.66";

    for i in 1..=9 {
        let (status, _) = token_from(&service, attacker, "admin", &format!("guess-{i}")).await;
        assert_eq!(status, 401, "guess {i}");
    }
    let (status, error) = token_from(&service, attacker, "admin", "guess-10").await;
    assert_eq!(status, 429, "the attacker's tenth guess: {error}");
    assert_eq!(error["error"]["code"], "rate_limited");

    // The real user, from their own address, signs in; the attacker is still held off, even
    // with the right password.
    let (status, body) = token_from(&service, "198.51.100.7", "admin", right).await;
    assert_eq!(status, 200, "the real user is not locked out: {body}");
    assert_eq!(token_from(&service, attacker, "admin", right).await.0, 429);
    let (status, _) = token_from(&service, attacker, "admin", "guess-11").await;
    assert_eq!(status, 429, "the attacker is still throttled");
}

#[tokio::test]
async fn one_address_spraying_many_user_names_is_throttled_as_an_address() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&behind_trusted_proxy(&database, "spray-1")).await;
    let sprayer = "203.0.113.67";
    let mut refused_at = None;
    for i in 1..=40 {
        let (status, _) = token_from(&service, sprayer, &format!("user-{i}"), "Winter2024!").await;
        if status == 429 {
            refused_at = Some(i);
            break;
        }
        assert_eq!(status, 401, "attempt {i}");
    }
    assert_eq!(
        refused_at,
        Some(30),
        "the address's 30th failure in a minute is refused"
    );
    // Another address is not affected.
    let (status, _) = token_from(&service, "198.51.100.8", "user-1", "Winter2024!").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn sixty_parallel_sign_ins_keep_healthz_fast_and_memory_bounded() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&behind_trusted_proxy(&database, "hash-1")).await;
    // One failed sign-in first: the hasher's memory is then part of the baseline.
    token_from(&service, "198.51.100.1", "admin", "warm-up").await;
    let before = resident_kib(service.pid());
    let done = Arc::new(AtomicBool::new(false));
    let peak = watch_peak(service.pid(), done.clone());
    let slowest_health_us = Arc::new(AtomicU64::new(0));
    let health = {
        let (url, done, slowest) = (
            service.url("/healthz"),
            done.clone(),
            slowest_health_us.clone(),
        );
        tokio::spawn(async move {
            let client = bare_client();
            let mut checks = 0u32;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                let took = started.elapsed().as_micros() as u64;
                assert_eq!(status.ok(), Some(200), "healthz");
                slowest.fetch_max(took, Ordering::Relaxed);
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            checks
        })
    };

    let started = Instant::now();
    let sign_ins = (0..60).map(|i| {
        let service = &service;
        async move {
            // A request that fails (times out) counts as status 0.
            try_token_from(service, &format!("192.0.2.{i}"), "admin", "wrong")
                .await
                .unwrap_or((0, Value::Null))
        }
    });
    let answers = futures_util::future::join_all(sign_ins).await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let checks = health.await.expect("healthz loop");
    let peak = peak.await.expect("watcher");
    let slowest = Duration::from_micros(slowest_health_us.load(Ordering::Relaxed));

    let wrong = answers.iter().filter(|(s, _)| *s == 401).count();
    let busy = answers.iter().filter(|(s, _)| *s == 503).count();
    eprintln!(
        "60 parallel wrong sign-ins in {took:?}: {wrong} answered 401, {busy} 503; slowest of \
         {checks} /healthz {slowest:?}; resident memory {before} KiB before, peak {peak} KiB"
    );
    for (status, body) in &answers {
        match status {
            401 => assert_eq!(body["error"]["code"], "unauthorized"),
            503 => assert_eq!(body["error"]["code"], "unavailable", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(wrong >= 1, "some sign-ins were checked");
    assert!(
        slowest < Duration::from_millis(400),
        "/healthz took {slowest:?} while passwords were hashed"
    );
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 160 * 1024,
        "resident memory grew by {grown} KiB (from {before} KiB to a peak of {peak} KiB)"
    );
}

#[tokio::test]
async fn hammering_refresh_never_outpaces_the_snapshot_tick() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "refresh-2");
    config.env = vec![("PULSEBOARD_SNAPSHOT_INTERVAL_MS".into(), "250".into())];
    let service = Service::start(&config).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |_| true)
        .await;
    // Several users, so that the per-user limit alone would let more through than the tick.
    let mut tokens = vec![service.token().to_owned()];
    for i in 0..4 {
        let name = format!("viewer-{i}");
        let password = add_user(&database, &name, "admin");
        tokens.push(crate::helpers::fetch_token(&service.base_url, &name, &password).await);
    }
    let mut stream = SseClient::connect(&service, "/api/dashboard/stream", None).await;
    stream.next_of("snapshot", Duration::from_secs(2)).await;

    let window = Duration::from_secs(3);
    let started = Instant::now();
    let service = &service;
    // Four loops per user: a refresh waits for the next tick, so one loop alone asks only
    // about as often as the tick comes.
    let hammers = tokens
        .iter()
        .cycle()
        .take(tokens.len() * 4)
        .map(|token| async move {
            let client = bare_client();
            let (mut ok, mut limited) = (0u32, 0u32);
            while started.elapsed() < window {
                let response = client
                    .post(format!("{}/api/dashboard/refresh", service.base_url))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("refresh");
                match response.status().as_u16() {
                    200 => ok += 1,
                    429 => {
                        assert!(response.headers().contains_key("retry-after"));
                        let error: Value = response.json().await.expect("JSON error");
                        assert_eq!(error["error"]["code"], "rate_limited", "{error}");
                        limited += 1;
                    }
                    other => panic!("refresh answered {other}"),
                }
            }
            (ok, limited)
        });
    let counting = async {
        let mut snapshots = 0u32;
        while started.elapsed() < window {
            let left = window.saturating_sub(started.elapsed());
            match stream.next(left).await {
                Some(event) if event.event == "snapshot" => snapshots += 1,
                Some(_) => {}
                None => break,
            }
        }
        snapshots
    };
    let (answers, snapshots) = tokio::join!(futures_util::future::join_all(hammers), counting);
    let ok: u32 = answers.iter().map(|(ok, _)| ok).sum();
    let limited: u32 = answers.iter().map(|(_, limited)| limited).sum();
    eprintln!(
        "{ok} refreshes answered, {limited} refused in 3 s; the stream got {snapshots} snapshots"
    );

    let most = (window.as_millis() / 250) as u32 + 1;
    assert!(
        snapshots <= most,
        "{snapshots} snapshots in {window:?} at one per 250 ms (at most {most})"
    );
    assert!(ok >= 5, "refreshes are still served: {ok}");
    assert!(limited > 0, "one user's flood is rate-limited");
}

#[tokio::test]
async fn a_uri_over_the_limit_gets_414_in_json_and_past_the_parser_its_400() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "uri-1")).await;
    let request = |length: usize| {
        format!(
            "GET /api/dashboard/history?pad={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(length),
            address(&service)
        )
    };

    // At the limit (8 KiB of request target) the route answers; over it, 414.
    let (fits, _) = raw_exchange(&service, &request(8_000), Duration::from_secs(5)).await;
    assert!(fits.starts_with("HTTP/1.1 401"), "{fits}");
    let (answer, _) = raw_exchange(&service, &request(16 * 1024), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert!(head.contains("application/json"), "{head}");
    let error: Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(error["error"]["code"], "uri_too_long", "{body}");

    // 100 KB: the `http` crate refuses a request target over 64 KiB while actix-http parses
    // the head, before any service sees it: the parser's own 400 (plain, as SPEC §5 allows),
    // and the connection closed.
    let (answer, closed) = raw_exchange(&service, &request(100_000), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(closed, "the connection stays open: {answer:?}");
}

#[tokio::test]
async fn an_http_1_0_client_gets_the_stream_delimited_by_closing_the_connection() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "http10-1")).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |_| true)
        .await;
    for connection in ["", "Connection: keep-alive\r\n"] {
        let request = format!(
            "GET /api/dashboard/stream?access_token={} HTTP/1.0\r\nHost: {}\r\n{connection}\r\n",
            service.token(),
            address(&service)
        );
        // The stream does not end: read what comes within a second.
        let (answer, _) = raw_exchange(&service, &request, Duration::from_secs(1)).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{connection}: {head}");
        assert!(!head.contains("content-length"), "{head}");
        // An HTTP/1.0 answer without `keep-alive` ends with its connection (RFC 1945 §7.2.2).
        assert!(!head.contains("keep-alive"), "{connection}: {head}");
        // The body is the events themselves, no chunk sizes between them.
        assert!(body.starts_with("retry: "), "{connection}: {body:.80}");
        assert!(body.contains("\nevent: snapshot\n"), "{body:.200}");
    }

    // HTTP/1.1 keeps chunked encoding.
    let request = format!(
        "GET /api/dashboard/stream?access_token={} HTTP/1.1\r\nHost: {}\r\n\r\n",
        service.token(),
        address(&service)
    );
    let (answer, _) = raw_exchange(&service, &request, Duration::from_secs(1)).await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{answer:.300}"
    );
}

//! Hardening (issue 23) over real sockets against the real binary: sign-in redirects stay on
//! the site and never fail on a header value, a request body that never arrives is answered
//! 408 and its connection closed, `HEAD` and 405, the per-user cap on live connections, and
//! `X-Forwarded-*` believed only from a trusted proxy.

use crate::auth::add_user;
use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};
use futures_util::{SinkExt, StreamExt};
use reqwest::header::{HeaderMap, ALLOW, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Follows no redirect, keeps no cookie, and gives up after 10 s.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

pub(crate) fn address(service: &Service) -> String {
    service.base_url.trim_start_matches("http://").to_owned()
}

/// Writes `request` on a fresh connection and reads until the server closes it or `limit`
/// passes; returns what was read and whether the server closed the connection.
pub(crate) async fn raw_exchange(
    service: &Service,
    request: &str,
    limit: Duration,
) -> (String, bool) {
    let mut stream = tokio::net::TcpStream::connect(address(service))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().find_map(|value| {
        let rest = value.to_str().ok()?.strip_prefix(&format!("{name}="))?;
        Some(rest.split(';').next()?.to_owned())
    })
}

/// The sign-in form's CSRF cookie and hidden field (double submit: both are sent back).
async fn login_form(service: &Service) -> (String, String) {
    let page = bare_client()
        .get(service.url("/login"))
        .send()
        .await
        .expect("login page");
    let cookie = cookie_value(page.headers(), "pulseboard_csrf").expect("csrf cookie");
    let html = page.text().await.expect("html");
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    let field = html[at..].split('"').next().expect("csrf value").to_owned();
    (cookie, field)
}

#[tokio::test]
async fn sign_in_with_a_control_character_or_another_host_in_next_goes_home_never_500() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "redir-1")).await;
    let (csrf_cookie, csrf) = login_form(&service).await;
    // The form body exactly as an attacker's page would post it: `next` percent-encoded once.
    let cases = [
        ("/%0A", "/"),
        ("/%0D%0A", "/"),
        ("/%0B", "/"),
        ("%0A", "/"),
        ("/%0D%0ASet-Cookie:%20x=1", "/"),
        ("/%09/evil.example/", "/"),
        ("%2F%2Fevil.example", "/"),
        ("/%5Cevil.example", "/"),
        ("/%250A", "/"),
        // A path of this site is kept: the redirect does follow `next` when it is safe.
        ("/console%3Fx%3D1", "/console?x=1"),
    ];
    for (next, expected) in cases {
        let body = format!(
            "username=admin&password={}&csrf={csrf}&next={next}",
            database.admin_password
        );
        let response = bare_client()
            .post(service.url("/login"))
            .header(COOKIE, format!("pulseboard_csrf={csrf_cookie}"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 303, "next={next}");
        assert_eq!(response.headers()[LOCATION], expected, "next={next}");
        assert!(
            cookie_value(response.headers(), "pulseboard_session").is_some(),
            "next={next}: signed in"
        );
    }
}

#[tokio::test]
async fn the_login_page_of_a_signed_in_user_never_redirects_off_site() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "redir-2")).await;
    for (query, expected) in [
        ("next=/%09/evil.example/", "/"),
        ("next=//evil.example/", "/"),
        ("next=/%5C/evil.example/", "/"),
        ("next=%2F%2Fevil.example", "/"),
        ("next=/%252F/evil.example", "/"),
        ("next=/%0D%0A", "/"),
        ("next=/console", "/console"),
        ("next=/ok?x=1", "/ok?x=1"),
    ] {
        let response = bare_client()
            .get(service.url(&format!("/login?{query}")))
            .bearer_auth(service.token())
            .send()
            .await
            .expect("login page");
        assert_eq!(response.status(), 303, "{query}");
        assert_eq!(response.headers()[LOCATION], expected, "{query}");
    }
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_in_json_and_the_connection_closed() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "body-1")).await;
    let request = format!(
        "POST /api/auth/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n",
        address(&service)
    );
    let started = Instant::now();
    let (answer, closed) = raw_exchange(&service, &request, Duration::from_secs(20)).await;
    let elapsed = started.elapsed();

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed, "the connection stays open: {answer}");
    // The deadline is 10 s; the close may take the 1 s linger for unread input on top.
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(13),
        "answered after {elapsed:?}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let error: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(error["error"]["code"], "request_timeout", "{body}");
    assert!(error["error"]["message"].is_string(), "{body}");
}

/// The answer a request gets when actix-http's own parser refuses it, before the application
/// sees it: its status, on a closed connection. Its body is the server's own (empty), which
/// SPEC §5 allows.
#[tokio::test]
async fn requests_the_http_parser_refuses_get_its_status_and_a_closed_connection() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "parser-1")).await;
    let host = address(&service);
    let too_many_headers: String = (0..200).map(|n| format!("X-{n}: a\r\n")).collect();
    let cases = [
        ("not HTTP", "NOT HTTP\x01\r\n\r\n".to_owned(), 400),
        (
            "a bad header",
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nContent-Length: x\r\n\r\n"),
            400,
        ),
        (
            "too many headers",
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n{too_many_headers}\r\n"),
            431,
        ),
        (
            "a head that stops halfway",
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nAcc"),
            408,
        ),
    ];
    for (what, request, status) in cases {
        let (answer, closed) = raw_exchange(&service, &request, Duration::from_secs(10)).await;
        assert!(closed, "{what}: the connection stays open: {answer:?}");
        assert_refused(&answer, status, what);
    }

    // Pipelined after a good request: that one's answer first, then the refusal.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\nNOT HTTP\x01\r\n\r\n");
    let (answer, closed) = raw_exchange(&service, &request, Duration::from_secs(10)).await;
    assert!(closed, "the connection stays open: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let second = answer.find("HTTP/1.1 400 ").expect("a second answer");
    assert!(answer[..second].ends_with("\"status\":\"ok\"}"), "{answer}");
    assert_refused(&answer[second..], 400, "pipelined");

    // After the console's upgrade, nothing is HTTP any more: a ping whose payload has the form
    // of the parser's answer comes back in the pong as it was, in a well-formed frame (nothing
    // between the socket and the dispatcher reads what is written).
    let url = format!(
        "{}/ws/console?access_token={}",
        service.base_url.replacen("http", "ws", 1),
        service.token()
    );
    let (mut console, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("console upgrade");
    let payload = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    console
        .send(Message::Ping(payload.as_bytes().to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = console.next().await {
            if let Message::Pong(echoed) = message.expect("a well-formed frame") {
                return echoed;
            }
        }
        panic!("the console closed");
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], payload.as_bytes());
}

fn assert_refused(answer: &str, status: u16, what: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {answer:?}"
    );
}

/// Headers that must match between `GET` and `HEAD` of one resource.
const COMPARED: [&str; 5] = [
    "content-type",
    "content-length",
    "cache-control",
    "x-content-type-options",
    "content-security-policy",
];

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

#[tokio::test]
async fn head_works_wherever_get_does_and_a_wrong_method_gets_405_with_allow() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "head-1")).await;
    let host = address(&service);

    // HEAD then GET on one connection: the HEAD answer has no body (else the GET's status line
    // would not follow its head directly), and the same headers.
    let request = format!(
        "HEAD /healthz HTTP/1.1\r\nHost: {host}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {host}\r\n\
         Connection: close\r\n\r\n"
    );
    let (answer, _) = raw_exchange(&service, &request, Duration::from_secs(10)).await;
    let (head, rest) = answer.split_once("\r\n\r\n").expect("HEAD answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "HEAD sent a body: {answer}"
    );
    let (get_head, get_body) = rest.split_once("\r\n\r\n").expect("GET answer");
    assert!(get_body.contains("\"status\":\"ok\""), "{get_body}");
    for name in COMPARED {
        assert_eq!(
            header_of(head, name),
            header_of(get_head, name),
            "{name}\nHEAD:\n{head}\nGET:\n{get_head}"
        );
    }
    assert!(header_of(head, "content-length").is_some(), "{head}");

    // HEAD of the event stream answers its head and ends, rather than streaming into nothing:
    // the request after it on the same connection is answered.
    let request = format!(
        "HEAD /api/dashboard/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        service.token()
    );
    let (answer, closed) = raw_exchange(&service, &request, Duration::from_secs(10)).await;
    let (head, rest) = answer.split_once("\r\n\r\n").expect("HEAD answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        header_of(head, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(rest.starts_with("HTTP/1.1 200") && closed, "{answer}");

    let client = bare_client();
    let cases = [
        ("DELETE", "/healthz", "GET, HEAD", true),
        ("PUT", "/api/dashboard/snapshot", "GET, HEAD", true),
        ("GET", "/api/auth/token", "POST", true),
        ("DELETE", "/api/announcements", "GET, HEAD, POST", true),
        ("POST", "/metrics", "GET, HEAD", true),
        ("PUT", "/ws/console", "GET, HEAD", true),
        ("DELETE", "/login", "GET, HEAD, POST", false),
    ];
    for (method, path, allow, json) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client
            .request(method.clone(), service.url(path))
            .bearer_auth(service.token())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()[ALLOW], allow, "{method} {path}");
        let body = response.text().await.expect("body");
        if json {
            let error: Value = serde_json::from_str(&body).expect("JSON error");
            assert_eq!(error["error"]["code"], "method_not_allowed", "{path}");
        } else {
            assert!(body.contains("<html"), "{path}: {body}");
        }
    }
    // An unknown path is still 404, not 405.
    let unknown = client
        .delete(service.url("/api/nothing-here"))
        .send()
        .await
        .expect("request");
    assert_eq!(unknown.status(), 404);
}

/// A live stream of the user whose token this is; the response is kept open while it lives.
async fn open_stream(service: &Service, token: &str) -> reqwest::Response {
    // No overall timeout: the stream must outlive the usual 10 s.
    reqwest::Client::new()
        .get(service.url("/api/dashboard/stream"))
        .bearer_auth(token)
        .send()
        .await
        .expect("stream request")
}

async fn assert_too_many(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 429, "{what}");
    let error: Value = response.json().await.expect("JSON error");
    assert_eq!(error["error"]["code"], "too_many_streams", "{what}");
}

/// The answer to a console WebSocket upgrade with the operator's token: head and what came
/// with it (a refusal's JSON body).
async fn console_answer(service: &Service, origin: &str, extra_headers: &str) -> String {
    let request = format!(
        "GET /ws/console?access_token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n{extra_headers}\r\n",
        service.token(),
        address(service)
    );
    let (answer, _) = raw_exchange(service, &request, Duration::from_secs(3)).await;
    answer
}

/// The status line of [`console_answer`].
async fn console_status(service: &Service, origin: &str, extra_headers: &str) -> String {
    let answer = console_answer(service, origin, extra_headers).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn one_user_holds_at_most_the_configured_live_connections_and_a_closed_one_frees_its_slot() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "cap-1");
    config.env.extend([
        ("PULSEBOARD_MAX_STREAMS_PER_USER".into(), "2".into()),
        // A closed stream is noticed at its next write: heartbeat every second.
        ("PULSEBOARD_HEARTBEAT_SECS".into(), "1".into()),
    ]);
    let service = Service::start(&config).await;
    let viewer_password = add_user(&database, "viewer", "admin");
    let viewer = crate::helpers::fetch_token(&service.base_url, "viewer", &viewer_password).await;
    let operator = service.token().to_owned();

    let first = open_stream(&service, &operator).await;
    let mut second = open_stream(&service, &operator).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    let mut first = first.bytes_stream();
    assert!(first.next().await.is_some(), "the first stream delivers");

    assert_too_many(open_stream(&service, &operator).await, "third SSE").await;
    let poll = bare_client()
        .get(service.url("/api/dashboard/poll?timeout=1"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("poll");
    assert_too_many(poll, "a long-poll").await;
    let own_origin = service.base_url.clone();
    let console = console_answer(&service, &own_origin, "").await;
    assert!(console.starts_with("HTTP/1.1 429"), "console: {console}");
    assert!(
        console.contains(r#""code":"too_many_streams""#),
        "console: {console}"
    );

    // Another user has slots of their own.
    let other = open_stream(&service, &viewer).await;
    assert_eq!(other.status(), 200, "another user");

    // The operator's streams are still served while the refusals happened.
    assert!(second.chunk().await.expect("read").is_some());

    drop(first);
    let started = Instant::now();
    loop {
        let again = open_stream(&service, &operator).await;
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the closed stream's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let direct = Service::start(&ServiceConfig::new(&database, &Names::new(), "proxy-1")).await;
    let other_database = TestDatabase::new(Backend::Sqlite).await;
    let mut trusting = ServiceConfig::new(&other_database, &Names::new(), "proxy-2");
    trusting
        .env
        .push(("PULSEBOARD_TRUST_PROXY".into(), "true".into()));
    let behind_proxy = Service::start(&trusting).await;
    let forged = "X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: http\r\n";

    let own = console_status(&direct, &direct.base_url, "").await;
    assert!(own.starts_with("HTTP/1.1 101"), "own origin: {own}");
    let refused = console_status(&direct, "http://evil.example", forged).await;
    assert!(
        refused.starts_with("HTTP/1.1 403"),
        "forged host: {refused}"
    );
    let believed = console_status(&behind_proxy, "http://evil.example", forged).await;
    assert!(believed.starts_with("HTTP/1.1 101"), "trusted: {believed}");

    // Sign-in throttling is keyed by the peer address: a client cannot escape it by sending
    // another X-Forwarded-For with every attempt (an address may fail 29 times a minute,
    // whatever the user names).
    let attempt = |service: &Service, user: String, forwarded_for: String| {
        let url = service.url("/api/auth/token");
        async move {
            bare_client()
                .post(url)
                .header("X-Forwarded-For", forwarded_for)
                .json(&json!({"username": user, "password": "wrong"}))
                .send()
                .await
                .expect("token request")
                .status()
                .as_u16()
        }
    };
    for i in 1..=29 {
        let status = attempt(&direct, format!("nobody-{i}"), format!("192.0.2.{i}")).await;
        assert_eq!(status, 401, "attempt {i}");
    }
    let thirtieth = attempt(&direct, "nobody-30".into(), "192.0.2.30".into()).await;
    assert_eq!(thirtieth, 429, "the peer address is throttled");
    // Behind a trusted proxy each forwarded address is its own client.
    for i in 1..=30 {
        let status = attempt(&behind_proxy, format!("nobody-{i}"), format!("192.0.2.{i}")).await;
        assert_eq!(status, 401, "attempt {i} from its own forwarded address");
    }
}

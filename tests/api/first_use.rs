//! Small things a new user meets on first use (issue 18): the browser's icon request, how the
//! live stream goes over the wire when the client accepts gzip, and a secret option (now kept
//! redacted in the configuration) that still does its job.

use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` as is and reads until `done` holds on what arrived, the server closes, or
/// 10 s pass; returns the head (lower-cased, for header checks) and the raw body.
async fn raw(service: &Service, request: &str, done: impl Fn(&[u8]) -> bool) -> (String, Vec<u8>) {
    let address = service.base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&answer) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    (head, answer[split + 4..].to_vec())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip\r\n{extra}Connection: close\r\n\r\n")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn browsers_get_an_icon_by_the_page_link_and_at_favicon_ico() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "icon-1")).await;

    // Asked for by convention, without a page: an SVG, not a 404.
    let response = reqwest::get(service.url("/favicon.ico"))
        .await
        .expect("icon");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let body = response.text().await.expect("body");
    assert!(body.starts_with("<svg"), "{body}");

    // Every page names it by its versioned URL, so browsers cache it for good.
    let page = reqwest::get(service.url("/login"))
        .await
        .expect("page")
        .text()
        .await
        .expect("page body");
    let link = page
        .split("<link rel=\"icon\" type=\"image/svg+xml\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no icon link in {page}"));
    assert!(link.starts_with("/static/favicon.svg?v="), "{link}");
    let icon = reqwest::get(service.url(link)).await.expect("icon");
    assert_eq!(icon.status(), 200);
    assert!(icon.headers()["cache-control"]
        .to_str()
        .expect("ascii")
        .contains("immutable"));
}

#[tokio::test]
async fn the_stream_is_neither_compressed_nor_labelled_while_json_and_pages_are_gzipped() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "gzip-1")).await;
    let bearer = format!("Authorization: Bearer {}\r\n", service.token());

    // The opening `retry:` line arrives as plain text, and no Content-Encoding at all (HTTP
    // keeps `identity` for Accept-Encoding).
    let (head, body) = raw(&service, &get("/api/dashboard/stream", &bearer), |seen| {
        contains(seen, b"retry: ")
    })
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(contains(&body, b"retry: 2000\n\n"), "plain text: {body:?}");

    // The sign-in page is for those not signed in yet.
    for (path, extra) in [
        ("/healthz", ""),
        ("/login", ""),
        ("/api/dashboard/history?minutes=5", bearer.as_str()),
    ] {
        let (head, body) = raw(&service, &get(path, extra), |_| false).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(head.contains("content-encoding: gzip"), "{path}: {head}");
        // gzip's magic number, after the first chunk's size line.
        assert!(contains(&body, b"\r\n\x1f\x8b"), "{path}: {body:?}");
    }
}

/// `PULSEBOARD_METRICS_TOKEN` is read through its redacted wrapper: `/metrics` still asks for
/// exactly that bearer token.
#[tokio::test]
async fn the_metrics_token_still_guards_metrics() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "metrics-token-1");
    let token = format!("metrics-{}", uuid::Uuid::new_v4().simple());
    config
        .env
        .push(("PULSEBOARD_METRICS_TOKEN".into(), token.clone()));
    let service = Service::start(&config).await;
    let client = reqwest::Client::new();
    let status = |bearer: Option<String>| {
        let mut request = client.get(service.url("/metrics"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move { request.send().await.expect("metrics").status().as_u16() }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some(format!("{token}x"))).await, 401);
    assert_eq!(status(Some(token.clone())).await, 200);
    assert!(!service.log_text().contains(&token), "the token in the log");
}

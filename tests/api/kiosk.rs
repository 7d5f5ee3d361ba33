//! Kiosk links (docs/security.md, Kiosk links), over real sockets: `pulseboard tokens issue`
//! prints a URL whose key `/kiosk` exchanges for a kiosk session and drops from the address
//! (a redirect); the key is in no log line of the service or of the command; the session reads
//! the dashboard (page, snapshot, history, stream, long-poll) and nothing else; `tokens list`
//! shows the link, used; revoking it (the command, which only writes the database, or the
//! console's audited `tokens.revoke` on another instance) closes its streams within 5 s and the
//! screen then says "this screen's link was revoked".

use crate::auth::{bare_client, raw_upgrade};
use crate::console::Console;
use crate::console_cluster::two_instances;
use crate::helpers::{fetch_token, Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::outage::{config_on_private_postgres, wait_until_ready};
use crate::private_services::PrivatePostgres;
use crate::proxy::Nginx;
use crate::revocation::last_words;
use crate::sse_client::SseClient;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{json, Value};
use sqlx::Connection;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// SPEC §5: a revoked link's streams close within 5 s on every instance.
pub(crate) const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Runs `pulseboard tokens <args>` against `database`; its standard output and error.
pub(crate) fn tokens_command(
    database: &TestDatabase,
    args: &[&str],
    public_url: &str,
) -> (String, String) {
    tokens_command_on(&database.url, args, public_url)
}

/// [`tokens_command`] on the database at `database_url`.
fn tokens_command_on(database_url: &str, args: &[&str], public_url: &str) -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .arg("tokens")
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("PULSEBOARD_PUBLIC_URL", public_url)
        .env("RUST_LOG", "debug")
        .output()
        .expect("tokens command");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "tokens {args:?}: {stdout}{stderr}");
    (stdout, stderr)
}

/// A link named `name` issued by the command for `service`: its URL and key.
pub(crate) fn issue(database: &TestDatabase, service: &Service, name: &str) -> (String, String) {
    issue_on(&database.url, service, name)
}

/// [`issue`] on the database at `database_url`.
fn issue_on(database_url: &str, service: &Service, name: &str) -> (String, String) {
    let (stdout, stderr) = tokens_command_on(
        database_url,
        &["issue", name, "--ttl", "2d"],
        &service.base_url,
    );
    let url = stdout
        .lines()
        .find(|line| line.starts_with(&service.base_url))
        .unwrap_or_else(|| panic!("no URL printed: {stdout}"))
        .to_owned();
    let key = url
        .strip_prefix(&format!("{}/kiosk?key=", service.base_url))
        .unwrap_or_else(|| panic!("not a kiosk URL: {url}"))
        .to_owned();
    assert!(key.len() >= 43, "a 256-bit key: {key}");
    assert!(
        !stderr.contains(&key),
        "the command logged the key: {stderr}"
    );
    (url, key)
}

/// Opens the link as a screen's browser would: the 303 to `/kiosk` and the kiosk cookie.
pub(crate) async fn open_link(url: &str) -> String {
    let response = bare_client().get(url).send().await.expect("open the link");
    assert_eq!(response.status(), 303, "the key is exchanged and dropped");
    assert_eq!(
        response.headers()[LOCATION],
        "/kiosk",
        "the address loses the key"
    );
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let set_cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pulseboard_kiosk="))
        .expect("a kiosk cookie")
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert!(
        !set_cookie.contains("pulseboard_kiosk=revoked"),
        "a live link: {set_cookie}"
    );
    set_cookie
        .trim_start_matches("pulseboard_kiosk=")
        .split(';')
        .next()
        .expect("value")
        .to_owned()
}

fn kiosk_cookie(session: &str) -> String {
    format!("pulseboard_kiosk={session}")
}

async fn get_with(service: &Service, path: &str, session: &str) -> (u16, String) {
    let response = bare_client()
        .get(service.url(path))
        .header(COOKIE, kiosk_cookie(session))
        .send()
        .await
        .expect("get");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn post_with(service: &Service, path: &str, session: &str, body: Value) -> (u16, Value) {
    let response = bare_client()
        .post(service.url(path))
        .header(COOKIE, kiosk_cookie(session))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The kiosk session's SSE stream of `service`, past its opening snapshot.
pub(crate) async fn kiosk_stream(service: &Service, session: &str) -> SseClient {
    let request = reqwest::Client::new()
        .get(service.url("/api/dashboard/stream"))
        .header(COOKIE, kiosk_cookie(session));
    let mut stream = SseClient::open(request)
        .await
        .expect("the kiosk session opens the stream");
    stream.opening().await;
    stream
}

#[tokio::test]
async fn a_kiosk_link_reads_the_dashboard_only_its_key_is_in_no_log_and_revoking_it_ends_its_stream(
) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "kiosk-1");
    // Every line the service can write, request spans and all.
    config.env.push(("RUST_LOG".into(), "debug".into()));
    let service = Service::start(&config).await;
    service.wait_until_ingesting(Duration::from_secs(15)).await;

    let (url, key) = issue(&database, &service, "lobby");
    let session = open_link(&url).await;
    // A second screen on the same link gets a session of its own.
    let other_screen = open_link(&url).await;
    assert_ne!(session, other_screen);

    // The wall screen: large figures, no navigation.
    let (status, page) = get_with(&service, "/kiosk", &session).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("data-kiosk") && page.contains(r#"data-figure="orders_per_minute""#),
        "{page}"
    );
    for navigation in ["<nav", r#"href="/console""#, r#"href="/""#, "/logout"] {
        assert!(
            !page.contains(navigation),
            "{navigation} on the wall screen"
        );
    }
    // The dashboard's data.
    for path in [
        "/api/dashboard/snapshot",
        "/api/dashboard/history?minutes=60",
        "/api/dashboard/poll?timeout=0",
    ] {
        let (status, body) = get_with(&service, path, &session).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let mut stream = kiosk_stream(&service, &session).await;

    // Nothing else: 403, in the JSON shape for the API.
    for path in ["/api/announcements?limit=5"] {
        let (status, body) = get_with(&service, path, &session).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains(r#""code":"forbidden""#), "{path}: {body}");
    }
    for (path, body) in [
        (
            "/api/announcements",
            json!({"message": "from the wall", "level": "info"}),
        ),
        ("/api/dashboard/refresh", Value::Null),
    ] {
        let (status, answer) = post_with(&service, path, &session, body).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{path}: {answer}");
    }
    for page in ["/", "/console"] {
        assert_eq!(get_with(&service, page, &session).await.0, 403, "{page}");
    }
    let handshake = raw_upgrade_with_cookie(&service, &session).await;
    assert!(handshake.starts_with("HTTP/1.1 403"), "{handshake}");
    // Refused for its role, not its origin (the service's own, which is allowed).
    assert!(handshake.contains("your role"), "{handshake}");

    // Listed, used, and never shown again.
    let (listed, _) = tokens_command(&database, &["list"], &service.base_url);
    let row = listed
        .lines()
        .find(|line| line.starts_with("lobby\t"))
        .unwrap_or_else(|| panic!("lobby not listed: {listed}"));
    let columns: Vec<&str> = row.split('\t').collect();
    assert_eq!(columns.len(), 4, "name, created, expires, last used: {row}");
    assert_ne!(columns[3], "never", "{row}");
    assert!(!listed.contains(&key));

    // Revoked by the command, which only writes the database: the instance notices by itself.
    let revoked_at = Instant::now();
    let (said, _) = tokens_command(&database, &["revoke", "lobby"], &service.base_url);
    assert!(said.contains("revoked lobby"), "{said}");
    let last = last_words(&mut stream, CLOSED_WITHIN).await;
    assert!(last.starts_with("closed: revoked"), "{last}");
    assert!(
        revoked_at.elapsed() < CLOSED_WITHIN,
        "closed after {:?}",
        revoked_at.elapsed()
    );
    let (status, page) = get_with(&service, "/kiosk", &session).await;
    assert_eq!(status, 401);
    assert!(page.contains("This screen's link was revoked."), "{page}");
    assert_eq!(
        get_with(&service, "/api/dashboard/snapshot", &session)
            .await
            .0,
        401
    );
    // The revoked key opens nothing, and still leaves the address; the page it lands on says
    // the link was revoked.
    assert_dead_link_lands_on_the_revoked_page(&service, &url).await;
    assert!(tokens_command(&database, &["list"], &service.base_url)
        .0
        .lines()
        .all(|l| !l.starts_with("lobby\t")));

    let log = service.log_text();
    assert!(
        log.contains("a kiosk link opened a session"),
        "the exchange is logged:\n{log}"
    );
    assert!(!log.contains(&key), "the key is in the service's log");
    assert!(
        !log.contains(&session),
        "a kiosk session id is in the service's log"
    );
}

/// Opening `url`, a dead link's, is the 303 to `/kiosk` with the dead-link cookie, and that
/// load is the revoked page (401), not the sign-in form.
async fn assert_dead_link_lands_on_the_revoked_page(service: &Service, url: &str) {
    let response = bare_client().get(url).send().await.expect("open");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/kiosk");
    let cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pulseboard_kiosk="))
        .expect("a kiosk cookie")
        .to_owned();
    let value = cookie
        .trim_start_matches("pulseboard_kiosk=")
        .split(';')
        .next()
        .expect("value");
    let (status, page) = get_with(service, "/kiosk", value).await;
    assert_eq!(status, 401, "{cookie}: {page}");
    assert!(page.contains("This screen's link was revoked."), "{page}");
}

/// The console handshake with a kiosk session's cookie.
async fn raw_upgrade_with_cookie(service: &Service, session: &str) -> String {
    // `raw_upgrade` sends no cookie; the query carries none either: a header is added by
    // passing it as the "origin" line's neighbour.
    let origin = format!("{}\r\nCookie: {}", service.base_url, kiosk_cookie(session));
    raw_upgrade(service, "", Some(&origin)).await
}

#[tokio::test]
async fn tokens_revoke_on_one_instance_closes_the_link_s_stream_on_the_other_within_5_s() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let (a, b) = two_instances(&database, &names).await;
    let (url, key) = issue(&database, &a, "wall-2");
    let session = open_link(&url).await;
    let mut stream = kiosk_stream(&b, &session).await;

    let token = fetch_token(&a.base_url, "admin", &database.admin_password).await;
    let mut console = Console::open(&a, &token).await;
    let listed = console.ok("tokens.list", Value::Null).await;
    let link = listed["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["name"] == "wall-2"))
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    for field in ["created", "expires", "last_used"] {
        assert!(link[field].is_string(), "{field}: {link}");
    }
    let revoked_at = Instant::now();
    let answer = console.ok("tokens.revoke", json!({"name": "wall-2"})).await;
    assert_eq!(answer["revoked"], "wall-2", "{answer}");
    let last = last_words(&mut stream, CLOSED_WITHIN).await;
    assert!(last.starts_with("closed: revoked"), "{last}");
    assert!(
        revoked_at.elapsed() < CLOSED_WITHIN,
        "closed after {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        get_with(&b, "/api/dashboard/snapshot", &session).await.0,
        401
    );

    // Revoking is audited, listing is not; a second revoke finds nothing.
    let (code, _) = console
        .refused("tokens.revoke", json!({"name": "wall-2"}))
        .await;
    assert_eq!(code, "invalid_payload");
    let audit = console.ok("audit.tail", json!({"limit": 20})).await;
    let commands: Vec<&str> = audit["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["command"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        commands.iter().filter(|c| **c == "tokens.revoke").count(),
        2,
        "{audit}"
    );
    assert!(!commands.contains(&"tokens.list"), "{audit}");
    for (service, name) in [(&a, "a"), (&b, "b")] {
        assert!(
            !service.log_text().contains(&key),
            "instance {name} logged the key"
        );
    }
}

#[tokio::test]
async fn through_nginx_a_kiosk_link_s_key_is_not_in_the_access_log() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "kiosk-px")).await;
    let port: u16 = service
        .address()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let nginx = Nginx::start([port, port]).await;
    let (url, key) = issue(&database, &service, "proxied");
    let through_proxy = url.replace(&service.base_url, &nginx.origin());
    let session = open_link(&through_proxy).await;
    let response = bare_client()
        .get(nginx.url("/kiosk"))
        .header(COOKIE, kiosk_cookie(&session))
        .send()
        .await
        .expect("the wall screen through nginx");
    assert_eq!(response.status(), 200);
    // nginx writes a request's line once it is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = nginx.access_log();
        if log.lines().filter(|l| l.contains("GET /kiosk ")).count() >= 2
            || Instant::now() > deadline
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        log.lines().filter(|l| l.contains("GET /kiosk ")).count(),
        2,
        "{log}"
    );
    assert!(!log.contains(&key), "nginx logged the key:\n{log}");
    assert!(!service.log_text().contains(&key));
}

/// A link past its TTL admits nothing: the screen's session gets the revoked page and 401 on
/// the dashboard's data, and its key the revoked page again (`--ttl` counts in minutes at the
/// least: the test writes the link's expiry into the past). A bad `?access_token=` on the
/// wall screen is the sign-in redirect, not a 500.
#[tokio::test]
async fn a_link_past_its_ttl_is_refused_and_a_bad_access_token_on_the_wall_screen_signs_in() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "kiosk-ttl")).await;

    let response = bare_client()
        .get(service.url("/kiosk?access_token=not-a-token"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 303, "a bad token signs in");
    let location = response.headers()[LOCATION].to_str().unwrap_or_default();
    assert!(location.starts_with("/login?next="), "{location}");

    let (url, _key) = issue(&database, &service, "hall");
    let session = open_link(&url).await;
    assert_eq!(get_with(&service, "/kiosk", &session).await.0, 200);

    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(&database.url)
        .await
        .expect("connect to the test database");
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 1_000;
    let expired = sqlx::query("UPDATE kiosk_links SET expires_at = $1 WHERE name = 'hall'")
        .bind(past)
        .execute(&mut connection)
        .await
        .expect("expire the link")
        .rows_affected();
    assert_eq!(expired, 1);
    connection.close().await.ok();

    let (status, page) = get_with(&service, "/kiosk", &session).await;
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("This screen's link was revoked."), "{page}");
    for path in ["/api/dashboard/snapshot", "/api/dashboard/poll?timeout=0"] {
        assert_eq!(get_with(&service, path, &session).await.0, 401, "{path}");
    }
    assert_dead_link_lands_on_the_revoked_page(&service, &url).await;
    let (listed, _) = tokens_command(&database, &["list"], &service.base_url);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("hall\t") && l.contains("(expired)")),
        "{listed}"
    );
}

/// A database that does not answer is 503 with `Retry-After` for a kiosk session too: the
/// wall screen's page and the dashboard's data (decided by `StoreError::is_unavailable`, as
/// every route), never a 500, and the screen's key exchange likewise.
#[tokio::test]
async fn with_the_database_stopped_a_kiosk_session_gets_503_with_retry_after() {
    let postgres = PrivatePostgres::start().await;
    let (config, database_name, _unused, names) =
        config_on_private_postgres(&postgres, "kioskdown").await;
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&config).await;
    wait_until_ready(
        &service,
        "the service becomes ready on the private PostgreSQL",
    )
    .await;
    let (url, _key) = issue_on(&postgres.url(&database_name), &service, "lobby");
    let session = open_link(&url).await;
    assert_eq!(get_with(&service, "/kiosk", &session).await.0, 200);

    postgres.stop().await;
    for path in ["/kiosk", "/api/dashboard/snapshot"] {
        let response = bare_client()
            .get(service.url(path))
            .header(COOKIE, kiosk_cookie(&session))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 503, "{path}");
        assert!(
            response.headers().get("retry-after").is_some(),
            "{path}: a Retry-After"
        );
    }
    let response = bare_client().get(&url).send().await.expect("open");
    assert_eq!(response.status(), 503, "the exchange");
    assert!(response.headers().get("retry-after").is_some());
}

/// Under TLS the kiosk session's cookie is `Secure`: a screen's session never travels in the
/// clear.
#[tokio::test]
async fn under_tls_the_kiosk_cookie_is_secure() {
    let folder = tempfile::tempdir().expect("folder");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert_path = folder.path().join("cert.pem");
    let key_path = folder.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("key");
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "kiosk-tls");
    config.env.push((
        "PULSEBOARD_TLS_CERT".into(),
        cert_path.display().to_string(),
    ));
    config
        .env
        .push(("PULSEBOARD_TLS_KEY".into(), key_path.display().to_string()));
    let service = Service::start(&config).await;
    assert!(
        service.base_url.starts_with("https://"),
        "{}",
        service.base_url
    );
    let (url, _key) = issue(&database, &service, "secure");
    let path_and_query = url
        .strip_prefix(&service.base_url)
        .expect("the service's URL")
        .to_owned();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("trust the test certificate");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ));
    let tcp = tokio::net::TcpStream::connect(service.base_url.trim_start_matches("https://"))
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: pulseboard_kiosk=")
        })
        .unwrap_or_else(|| panic!("no kiosk cookie: {answer}"));
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(!cookie.contains("pulseboard_kiosk=revoked"), "{cookie}");
}

/// Without `PULSEBOARD_PUBLIC_URL`, `tokens issue` prints the link under the service's own
/// address as its configuration says (`PULSEBOARD_BIND`, `https://` with TLS), not a fixed
/// `http://127.0.0.1:8080`, and says to set `PULSEBOARD_PUBLIC_URL` behind a proxy.
#[tokio::test]
async fn tokens_issue_without_a_public_url_prints_the_service_s_own_address() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .args(["tokens", "issue", "hall"])
        .env("DATABASE_URL", &database.url)
        .env_remove("PULSEBOARD_PUBLIC_URL")
        .env("PULSEBOARD_BIND", "10.1.2.3:8443")
        .env("PULSEBOARD_TLS_CERT", "/etc/pulseboard/cert.pem")
        .env("PULSEBOARD_TLS_KEY", "/etc/pulseboard/key.pem")
        .output()
        .expect("tokens command");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("https://10.1.2.3:8443/kiosk?key=")),
        "{stdout}"
    );
    assert!(stdout.contains("set PULSEBOARD_PUBLIC_URL"), "{stdout}");
}

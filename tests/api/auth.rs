//! Identity and security (docs/security.md; docs/api.md: errors, console handshake): roles on every route for every kind
//! of credential, tokens, CSRF, sign-out, throttling, the console handshake, TLS, and logs that
//! never carry a secret.

use crate::helpers::{
    fetch_token, test_password, Backend, Names, Service, ServiceConfig, TestDatabase,
};
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that follows no redirect and keeps no cookie: every request says what it sends.
pub(crate) fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Creates a user with the real `users add` command; returns their password.
pub(crate) fn add_user(database: &TestDatabase, name: &str, role: &str) -> String {
    users_command_with_password(database, &["add", name, "--role", role])
}

/// Runs `pulseboard users <args> --password-stdin` with a fresh password, which it must not
/// print; returns the password.
pub(crate) fn users_command_with_password(database: &TestDatabase, args: &[&str]) -> String {
    let password = test_password();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pulseboard"))
        .arg("users")
        .args(args)
        .arg("--password-stdin")
        .env("DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("users command");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("password");
    let output = child.wait_with_output().expect("users command output");
    assert!(output.status.success(), "users {args:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(&password));
    password
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().find_map(|value| {
        let text = value.to_str().ok()?;
        let rest = text.strip_prefix(&format!("{name}="))?;
        Some(rest.split(';').next()?.to_owned())
    })
}

fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[at..].split('"').next().expect("csrf value").to_owned()
}

/// A browser session: its cookie and the CSRF token its pages carry.
pub(crate) struct Session {
    pub cookie: String,
    pub csrf: String,
}

pub(crate) async fn sign_in(service: &Service, user: &str, password: &str) -> Session {
    let client = bare_client();
    let page = client
        .get(service.url("/login"))
        .send()
        .await
        .expect("login page");
    let form_cookie = cookie_value(page.headers(), "pulseboard_csrf").expect("csrf cookie");
    let form_csrf = hidden_csrf(&page.text().await.expect("html"));
    let response = client
        .post(service.url("/login"))
        .header(COOKIE, format!("pulseboard_csrf={form_cookie}"))
        .form(&[
            ("username", user),
            ("password", password),
            ("csrf", &form_csrf),
            ("next", "/"),
        ])
        .send()
        .await
        .expect("sign in");
    assert_eq!(response.status(), 303, "sign-in of {user}");
    let set_cookie = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pulseboard_session="))
        .expect("session cookie")
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = cookie_value(response.headers(), "pulseboard_session").expect("session");
    let dashboard = client
        .get(service.url("/"))
        .header(COOKIE, format!("pulseboard_session={cookie}"))
        .send()
        .await
        .expect("dashboard");
    let csrf = hidden_csrf(&dashboard.text().await.expect("html"));
    Session { cookie, csrf }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Page,
    Api,
    WebSocket,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Need {
    Viewer,
    Operator,
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Cookie,
    Bearer,
    Query,
}

struct Route {
    method: &'static str,
    path: &'static str,
    kind: Kind,
    need: Need,
}

const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/",
        kind: Kind::Page,
        need: Need::Viewer,
    },
    Route {
        method: "GET",
        path: "/console",
        kind: Kind::Page,
        need: Need::Operator,
    },
    Route {
        method: "GET",
        path: "/api/dashboard/snapshot",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "GET",
        path: "/api/dashboard/history?minutes=5",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "POST",
        path: "/api/dashboard/refresh",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "GET",
        path: "/api/announcements?limit=5",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "POST",
        path: "/api/announcements",
        kind: Kind::Api,
        need: Need::Operator,
    },
    Route {
        method: "GET",
        path: "/api/dashboard/stream",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "GET",
        path: "/api/dashboard/poll?timeout=1",
        kind: Kind::Api,
        need: Need::Viewer,
    },
    Route {
        method: "GET",
        path: "/ws/console",
        kind: Kind::WebSocket,
        need: Need::Operator,
    },
];

/// A credential as one kind of client presents it.
struct Credential {
    via: Via,
    token: String,
    session: Session,
}

async fn call(
    service: &Service,
    route: &Route,
    credential: Option<&Credential>,
) -> (u16, HeaderMap, String) {
    let mut url = service.url(route.path);
    let mut request = if route.method == "POST" {
        bare_client().post(&url)
    } else {
        bare_client().get(&url)
    };
    if let Some(credential) = credential {
        match credential.via {
            Via::Cookie => {
                request = request
                    .header(
                        COOKIE,
                        format!("pulseboard_session={}", credential.session.cookie),
                    )
                    .header("X-CSRF-Token", &credential.session.csrf);
            }
            Via::Bearer => request = request.bearer_auth(&credential.token),
            Via::Query => {
                let joiner = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{joiner}access_token={}", credential.token);
                request = if route.method == "POST" {
                    bare_client().post(&url)
                } else {
                    bare_client().get(&url)
                };
            }
        }
    }
    if route.kind == Kind::WebSocket {
        request = request
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    if route.path == "/api/announcements" && route.method == "POST" {
        request = request.json(&json!({"message": "route check", "level": "info"}));
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    // Streams and upgrades never end: read the body only where it is finite.
    let body = if (route.path.ends_with("/stream") && status == 200) || status == 101 {
        String::new()
    } else {
        response.text().await.unwrap_or_default()
    };
    (status, headers, body)
}

#[tokio::test]
async fn every_route_checks_credentials_and_role_for_cookie_bearer_and_query_token_alike() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    // The service first: it creates operator `admin` only while no user exists.
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "authz-1")).await;
    let viewer_password = add_user(&database, "viewer", "admin");
    service
        .wait_for_snapshot(Duration::from_secs(10), |_| true)
        .await;

    for route in ROUTES {
        let (status, headers, body) = call(&service, route, None).await;
        match route.kind {
            Kind::Page => {
                assert_eq!(status, 303, "{} without credentials", route.path);
                let location = headers[LOCATION].to_str().expect("location");
                assert!(location.starts_with("/login?next="), "{location}");
            }
            _ => {
                assert_eq!(status, 401, "{} without credentials: {body}", route.path);
                if route.kind == Kind::Api {
                    let error: Value = serde_json::from_str(&body).expect("JSON error");
                    assert_eq!(error["error"]["code"], "unauthorized");
                }
            }
        }
    }

    for via in [Via::Cookie, Via::Bearer, Via::Query] {
        let people = [
            (Need::Viewer, "viewer", viewer_password.as_str()),
            (Need::Operator, "admin", database.admin_password.as_str()),
        ];
        for (has, user, password) in people {
            let credential = Credential {
                via,
                token: fetch_token(&service.base_url, user, password).await,
                session: sign_in(&service, user, password).await,
            };
            for route in ROUTES {
                let (status, _, body) = call(&service, route, Some(&credential)).await;
                let context = format!(
                    "{} {} as {user} via {via:?}: {body}",
                    route.method, route.path
                );
                if has >= route.need {
                    let expected = match route.kind {
                        Kind::WebSocket => 101,
                        _ if route.method == "POST" && route.path == "/api/announcements" => 201,
                        _ => 200,
                    };
                    assert_eq!(status, expected, "{context}");
                } else {
                    assert_eq!(status, 403, "{context}");
                    if route.kind == Kind::Api {
                        let error: Value = serde_json::from_str(&body).expect("JSON error");
                        assert_eq!(error["error"]["code"], "forbidden", "{context}");
                    }
                }
            }
        }
    }
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

async fn status_with_token(service: &Service, token: &str) -> u16 {
    bare_client()
        .get(service.url("/api/dashboard/snapshot"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn expired_tampered_and_foreign_tokens_are_refused_and_tokens_work_across_instances() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    // No PULSEBOARD_SECRET: the instances share the one generated into the database.
    let first = Service::start(&ServiceConfig::new(&database, &names, "tok-a")).await;
    let second = Service::start(&ServiceConfig::new(&database, &names, "tok-b")).await;
    for service in [&first, &second] {
        service
            .wait_for_snapshot(Duration::from_secs(15), |_| true)
            .await;
    }
    let token = fetch_token(&first.base_url, "admin", &database.admin_password).await;
    assert_eq!(
        status_with_token(&second, &token).await,
        200,
        "issued by the other instance"
    );

    let secret = stored_secret(&database.url).await;
    let epoch = stored_text(
        &database.url,
        "SELECT credential_epoch FROM users WHERE username = 'admin'",
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| json!({"sub": "admin", "role": "operator", "epoch": epoch, "iat": now - 100, "exp": exp});
    assert_eq!(
        status_with_token(&first, &sign(&claims(now + 60), &secret)).await,
        200,
        "well made"
    );
    // Made before tokens named the user's credential epoch (docs/security.md, Revocation).
    let without_epoch =
        json!({"sub": "admin", "role": "operator", "iat": now - 100, "exp": now + 60});
    assert_eq!(
        status_with_token(&first, &sign(&without_epoch, &secret)).await,
        401,
        "no epoch"
    );
    let mut other_epoch = claims(now + 60);
    other_epoch["epoch"] = json!("0123456789abcdef0123456789abcdef");
    assert_eq!(
        status_with_token(&first, &sign(&other_epoch, &secret)).await,
        401,
        "another epoch"
    );
    assert_eq!(
        status_with_token(&first, &sign(&claims(now - 1), &secret)).await,
        401,
        "expired"
    );
    let foreign = sign(&claims(now + 60), "some-other-secret-entirely");
    assert_eq!(
        status_with_token(&first, &foreign).await,
        401,
        "other secret"
    );
    let parts: Vec<&str> = token.split('.').collect();
    let forged_body = sign(
        &json!({"sub": "root", "role": "operator", "iat": now, "exp": now + 60}),
        "x",
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        forged_body.split('.').nth(1).expect("body"),
        parts[2]
    );
    assert_eq!(status_with_token(&first, &tampered).await, 401, "tampered");
    assert_eq!(
        status_with_token(&first, "not.a.token").await,
        401,
        "garbage"
    );
}

async fn stored_secret(database_url: &str) -> String {
    stored_text(
        database_url,
        "SELECT value FROM settings WHERE name = 'secret'",
    )
    .await
}

/// The one text value `query` selects from the PostgreSQL database at `database_url`.
async fn stored_text(database_url: &str, query: &str) -> String {
    use sqlx::{Connection, Row};
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect");
    sqlx::query(query)
        .fetch_one(&mut connection)
        .await
        .expect("row")
        .try_get(0)
        .expect("text")
}

#[tokio::test]
async fn sign_in_needs_its_csrf_token_and_sign_out_ends_the_session() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "csrf-1")).await;
    let password = database.admin_password.as_str();
    let client = bare_client();

    let without = client
        .post(service.url("/login"))
        .form(&[
            ("username", "admin"),
            ("password", password),
            ("csrf", "made-up"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(without.status(), 403, "no CSRF cookie");
    assert!(cookie_value(without.headers(), "pulseboard_session").is_none());
    let mismatched = client
        .post(service.url("/login"))
        .header(COOKIE, "pulseboard_csrf=one-value")
        .form(&[
            ("username", "admin"),
            ("password", password),
            ("csrf", "another-value"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(mismatched.status(), 403, "cookie and field differ");

    let session = sign_in(&service, "admin", password).await;
    let with_cookie = |path: &str| {
        client
            .get(service.url(path))
            .header(COOKIE, format!("pulseboard_session={}", session.cookie))
    };
    assert_eq!(
        with_cookie("/api/dashboard/snapshot")
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    // A cookie-authenticated POST without the session's CSRF token is refused.
    let forged = client
        .post(service.url("/api/dashboard/refresh"))
        .header(COOKIE, format!("pulseboard_session={}", session.cookie))
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);

    let signed_out = client
        .post(service.url("/logout"))
        .header(COOKIE, format!("pulseboard_session={}", session.cookie))
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(signed_out.status(), 303);
    assert_eq!(signed_out.headers()[LOCATION], "/login");
    assert_eq!(
        with_cookie("/api/dashboard/snapshot")
            .send()
            .await
            .expect("get")
            .status(),
        401
    );
    assert_eq!(
        with_cookie("/").send().await.expect("get").status(),
        303,
        "back to sign-in"
    );
}

#[tokio::test]
async fn the_tenth_wrong_password_in_a_minute_is_throttled_and_the_right_one_works_after() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "throttle-1")).await;
    let attempt = |password: String| {
        let url = service.url("/api/auth/token");
        async move {
            bare_client()
                .post(url)
                .json(&json!({"username": "admin", "password": password}))
                .send()
                .await
                .expect("token request")
        }
    };
    for i in 1..=9 {
        let response = attempt(format!("wrong-{i}")).await;
        assert_eq!(response.status(), 401, "attempt {i}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let tenth = attempt("wrong-10".into()).await;
    assert_eq!(tenth.status(), 429);
    let retry_after: u64 = tenth.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        tenth.json::<Value>().await.expect("json")["error"]["code"],
        "rate_limited"
    );
    assert_eq!(
        attempt(database.admin_password.clone()).await.status(),
        429,
        "still throttled"
    );

    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(200)).await;
    assert_eq!(
        attempt(database.admin_password.clone()).await.status(),
        200,
        "after the window"
    );
}

/// The status line of a raw WebSocket upgrade request, and what followed it.
pub(crate) async fn raw_upgrade(service: &Service, query: &str, origin: Option<&str>) -> String {
    let address = service.base_url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /ws/console{query} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // The head, and for an upgrade the first frame, which may come in a later segment.
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(read)) = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if text.contains("\r\n\r\n")
            && (!text.starts_with("HTTP/1.1 101") || text.contains("welcome"))
        {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_console_never_upgrades_without_credentials_the_operator_role_or_an_allowed_origin() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "ws-1")).await;
    let viewer_password = add_user(&database, "viewer", "admin");
    let operator = service.token().to_owned();
    let viewer = fetch_token(&service.base_url, "viewer", &viewer_password).await;
    let own_origin = service.base_url.clone();

    let none = raw_upgrade(&service, "", Some(&own_origin)).await;
    assert!(none.starts_with("HTTP/1.1 401"), "{none}");
    let admin = raw_upgrade(
        &service,
        &format!("?access_token={viewer}"),
        Some(&own_origin),
    )
    .await;
    assert!(admin.starts_with("HTTP/1.1 403"), "{admin}");
    let foreign = raw_upgrade(
        &service,
        &format!("?access_token={operator}"),
        Some("http://evil.example"),
    )
    .await;
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    let bad_token = raw_upgrade(&service, "?access_token=nope", Some(&own_origin)).await;
    assert!(bad_token.starts_with("HTTP/1.1 401"), "{bad_token}");

    let welcome = raw_upgrade(
        &service,
        &format!("?access_token={operator}"),
        Some(&own_origin),
    )
    .await;
    assert!(welcome.starts_with("HTTP/1.1 101"), "{welcome}");
    assert!(
        welcome.contains("\"type\":\"welcome\""),
        "first frame: {welcome}"
    );
}

/// With `PULSEBOARD_ALLOWED_ORIGINS` set, those origins and only those may open the console:
/// the service's own origin is then refused too (the list replaces it), with the JSON error.
#[tokio::test]
async fn configured_origins_replace_the_services_own() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "ws-origins");
    config.env.push((
        "PULSEBOARD_ALLOWED_ORIGINS".into(),
        "https://ops.example.com,https://console.example.com/".into(),
    ));
    let service = Service::start(&config).await;
    let query = format!("?access_token={}", service.token());

    for allowed in ["https://ops.example.com", "https://CONSOLE.example.com"] {
        let answer = raw_upgrade(&service, &query, Some(allowed)).await;
        assert!(answer.starts_with("HTTP/1.1 101"), "{allowed}: {answer}");
    }
    let own_origin = service.base_url.clone();
    for refused in [own_origin.as_str(), "https://ops.example.com.evil", "null"] {
        let answer = raw_upgrade(&service, &query, Some(refused)).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{refused}: {answer}");
        assert!(
            answer.contains(r#""code":"forbidden""#),
            "{refused}: {answer}"
        );
    }
    // Not a browser (no `Origin`): credentials alone decide.
    let answer = raw_upgrade(&service, &query, None).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
}

#[tokio::test]
async fn https_and_wss_with_a_self_signed_certificate_and_no_plain_http() {
    let folder = tempfile::tempdir().expect("folder");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert_path = folder.path().join("cert.pem");
    let key_path = folder.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("cert");
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).expect("key");

    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "tls-1");
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
    let address = service.base_url.trim_start_matches("https://").to_owned();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(certified.cert.der().clone())
        .expect("trust the test certificate");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ));
    let connect = || {
        let tls = tls.clone();
        let address = address.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&address).await.expect("tcp");
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            tls.connect(name, tcp).await.expect("TLS handshake")
        }
    };

    // HTTPS: a token over TLS.
    let body = json!({"username": "admin", "password": database.admin_password}).to_string();
    let mut stream = connect().await;
    let request = format!(
        "POST /api/auth/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let token = answer
        .split("\"access_token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("token")
        .to_owned();

    // WSS: the console over TLS.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("wss://localhost/ws/console?access_token={token}"),
    )
    .expect("request");
    let (mut socket, response) = tokio_tungstenite::client_async(request, connect().await)
        .await
        .expect("WSS upgrade");
    assert_eq!(response.status(), 101);
    use futures_util::StreamExt;
    let first = socket.next().await.expect("frame").expect("frame");
    assert!(first.to_string().contains("\"welcome\""), "{first}");

    // A request the HTTP parser refuses gets its 400 over TLS too, and the connection ends.
    let mut stream = connect().await;
    stream
        .write_all(b"NOT HTTP\x01\r\n\r\n")
        .await
        .expect("write");
    // Read until the connection ends, by a close or by an error.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => break false,
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(closed, "the connection stays open: {answer:?}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(&address).await.expect("tcp");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut reply = vec![0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut reply))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&reply[..read]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn no_log_line_carries_a_password_a_token_a_session_or_the_secret() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let secret = format!("secret-{}", test_password());
    let mut config = ServiceConfig::new(&database, &Names::new(), "logs-1");
    config
        .env
        .push(("PULSEBOARD_SECRET".into(), secret.clone()));
    config
        .env
        .push(("RUST_LOG".into(), "debug,sqlx=debug".into()));
    let service = Service::start(&config).await;
    let wrong = test_password();

    // Everything that handles a secret: good and bad sign-ins, tokens, tokens in URLs.
    let session = sign_in(&service, "admin", &database.admin_password).await;
    let token = fetch_token(&service.base_url, "admin", &database.admin_password).await;
    let client = bare_client();
    let _ = client
        .post(service.url("/api/auth/token"))
        .json(&json!({"username": "admin", "password": wrong}))
        .send()
        .await;
    let _ = client
        .get(service.url(&format!(
            "/api/dashboard/poll?timeout=1&access_token={token}"
        )))
        .send()
        .await;
    let _ = raw_upgrade(&service, &format!("?access_token={token}"), None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = service.log_text();
    assert!(log.contains("signed in"), "the log was captured:\n{log}");
    for (what, value) in [
        ("admin password", database.admin_password.as_str()),
        ("wrong password", wrong.as_str()),
        ("secret", secret.as_str()),
        ("token", token.as_str()),
        ("session", session.cookie.as_str()),
    ] {
        assert!(!log.contains(value), "the {what} is in the log");
    }
    assert!(!log.contains("$argon2"), "a password hash is in the log");
}

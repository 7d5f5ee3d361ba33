//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
//! over WebDriver). Every scenario saves a screenshot under `target/screenshots/`.

use crate::helpers::{event, Backend, Broker, Names, Service, ServiceConfig, TestDatabase};
use crate::private_services::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Chromium is chromedriver's child: killing the driver would orphan it. Every process
    /// started with this browser's own profile folder goes, whether the test passed or panicked.
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-f", "--"])
            .arg(format!(
                "--user-data-dir={}",
                self._profile.path().display()
            ))
            .status();
    }
}

impl Browser {
    async fn start(javascript: bool) -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "chromium-driver is missing: run scripts/test.sh, which installs it"
        );
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver");
        let profile = tempfile::tempdir().expect("profile");
        let mut prefs = serde_json::Map::new();
        if !javascript {
            prefs.insert(
                "profile.managed_default_content_settings.javascript".into(),
                json!(2),
            );
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())],
                "prefs": prefs,
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut last_error = None;
        for _ in 0..50 {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        _driver: driver,
                        _profile: profile,
                    }
                }
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no WebDriver session: {last_error:?}");
    }

    async fn screenshot(&self, name: &str) {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&folder).expect("screenshot folder");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(folder.join(format!("{name}.png")), png).expect("write screenshot");
    }

    async fn sign_in(&self, service: &Service, password: &str) {
        self.client.goto(&service.url("/")).await.expect("open");
        let form = self
            .client
            .form(Locator::Css("form[action='/login']"))
            .await
            .expect("sign-in form");
        form.set_by_name("username", "admin").await.expect("user");
        form.set_by_name("password", password)
            .await
            .expect("password");
        form.submit().await.expect("submit");
        self.wait_for_css("[data-dashboard]", Duration::from_secs(10))
            .await;
    }

    async fn wait_for_css(&self, css: &str, timeout: Duration) {
        self.client
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// Opens the console page and waits until its WebSocket is connected.
    async fn open_console(&self, service: &Service) {
        self.client
            .goto(&service.url("/console"))
            .await
            .expect("console");
        self.wait_for_text("[data-connection-text]", Duration::from_secs(10), |t| {
            t == "Connected"
        })
        .await;
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// What a form field at `css` holds now.
    async fn value(&self, css: &str) -> Value {
        self.client
            .execute(
                "return document.querySelector(arguments[0]).value;",
                vec![json!(css)],
            )
            .await
            .expect("script")
    }

    async fn wait_until_connected(&self, timeout: Duration) {
        self.wait_for_text("[data-connection-text]", timeout, |t| {
            t.starts_with("Connected")
        })
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// Polls `check` on the page's text at `css` until it holds.
    async fn wait_for_text(
        &self,
        css: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if check(&text) {
                return text;
            }
            assert!(
                started.elapsed() < timeout,
                "{css} stayed {text:?} for {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// No script error, no blocked resource and no failed request so far.
    async fn assert_clean(&self) {
        let errors = self
            .js("return window.pulseboardErrors || ['app.js did not run'];")
            .await;
        assert_eq!(errors, json!([]), "script errors");
        let failed = self
            .js("return performance.getEntriesByType('resource').filter(e => e.responseStatus >= 400).map(e => e.name + ' ' + e.responseStatus);")
            .await;
        assert_eq!(failed, json!([]), "failed requests");
    }
}

fn order(id: &str, amount: i64) -> (String, Vec<u8>) {
    (
        "order.placed".to_owned(),
        event(id, "order.placed", 0, "u-browser", Some(amount)),
    )
}

#[tokio::test]
async fn sign_in_shows_rendered_figures_that_move_with_events_and_charts() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "browser-1")).await;
    broker.publish_all(&[order("b1", 1_000)]).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["revenue"]["today_minor"] == 1_000
        })
        .await;

    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    let rendered = browser.text("[data-figure='today_minor']").await;
    assert!(
        rendered.contains("10.00"),
        "server-rendered revenue: {rendered}"
    );
    browser.wait_until_connected(Duration::from_secs(5)).await;

    broker
        .publish_all(&[order("b2", 2_345), order("b3", 1_000)])
        .await;
    let published = Instant::now();
    let moved = browser
        .wait_for_text("[data-figure='today_minor']", Duration::from_secs(2), |t| {
            t.contains("43.45")
        })
        .await;
    assert!(published.elapsed() < Duration::from_secs(2), "{moved}");
    // All three orders are on the chart (in one or, across a minute boundary, two points).
    let chart = browser
        .js("const s = window.pulseboardSeries; return [s.xs.length, s.orders.reduce((a, b) => a + b, 0)];")
        .await;
    assert_eq!(chart[0], 60, "an hour of minutes: {chart}");
    assert_eq!(chart[1], 3, "the orders of the hour: {chart}");
    let ranges = browser
        .js("return [...document.querySelectorAll('.uplot')].length;")
        .await;
    assert_eq!(ranges, 2, "two charts drawn");
    browser.screenshot("1-dashboard-live").await;
    // The same page on a phone and on a 4K wall screen: nothing overflows sideways.
    for (name, width, height) in [("1-phone", 390, 844), ("1-wall-4k", 3840, 2160)] {
        browser
            .client
            .set_window_size(width, height)
            .await
            .expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let overflow = browser
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            .await;
        assert_eq!(overflow, 0, "horizontal overflow at {width}x{height}");
        browser.screenshot(name).await;
    }
    browser.assert_clean().await;
}

#[tokio::test]
async fn refresh_and_announcements_show_on_the_page() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "browser-2")).await;
    service.wait_until_ingesting(Duration::from_secs(10)).await;
    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    browser.wait_until_connected(Duration::from_secs(5)).await;

    let before: i64 = browser.text("[data-seq]").await.parse().expect("seq");
    browser
        .client
        .find(Locator::Css("[data-refresh]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    browser
        .wait_for_text("[data-seq]", Duration::from_secs(3), |t| {
            t.parse::<i64>().is_ok_and(|s| s > before)
        })
        .await;

    let response = service
        .client()
        .post(service.url("/api/announcements"))
        .json(&json!({"message": "Deploy at 17:00, expect a short gap", "level": "warning"}))
        .send()
        .await
        .expect("announce");
    assert_eq!(response.status(), 201);
    let banner = browser
        .wait_for_text("[data-announcements]", Duration::from_secs(3), |t| {
            t.contains("Deploy at 17:00")
        })
        .await;
    assert!(banner.to_lowercase().contains("warning"), "{banner}");
    browser.screenshot("3-refresh-and-announcement").await;
    browser
        .client
        .find(Locator::Css("[data-announcement-id] [data-dismiss]"))
        .await
        .expect("dismiss")
        .click()
        .await
        .expect("click");
    let left = browser
        .js("return document.querySelectorAll('[data-announcement-id]').length;")
        .await;
    assert_eq!(left, 0, "dismissed");
    browser.assert_clean().await;
}

#[tokio::test]
async fn assets_are_versioned_compressed_and_cached_and_the_stream_is_not_compressed() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "assets-1")).await;
    let client = reqwest::Client::new();
    let asset = |path: String| {
        client
            .get(service.url(&path))
            .header("Accept-Encoding", "gzip")
            .send()
    };
    let page = service.get("/").await.text().await.expect("page");
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page loads its script by a versioned URL")
        .to_owned();
    assert!(script.starts_with("/static/app.js?v="), "{script}");
    let response = asset(script.clone()).await.expect("script");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .contains("javascript"));
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(headers["cache-control"]
        .to_str()
        .expect("ascii")
        .contains("immutable"));
    let etag = headers["etag"].to_str().expect("ascii").to_owned();
    let again = client
        .get(service.url(&script))
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(again.status(), 304);
    let licence = asset("/static/vendor/uplot/LICENSE".into())
        .await
        .expect("licence");
    assert_eq!(
        licence.status(),
        200,
        "the vendored licence ships with the binary"
    );

    let stream = service
        .client()
        .get(service.url("/api/dashboard/stream"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_ne!(
        stream
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
}

/// $60,000.00 of orders in one minute on a 1440-pixel-wide page: every y-axis label of the
/// revenue chart fits in the axis (a fixed axis width showed "0,000.00").
#[tokio::test]
async fn large_revenue_labels_fit_the_chart_axis() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "browser-axis")).await;
    // All six orders in one minute, so one point carries the whole $60,000.00.
    crate::helpers::clear_of_minute_boundary(Duration::from_secs(5)).await;
    let orders = (1..=6)
        .map(|n| order(&format!("axis-{n}"), 1_000_000))
        .collect::<Vec<_>>();
    broker.publish_all(&orders).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["revenue"]["today_minor"] == 6_000_000
        })
        .await;

    let browser = Browser::start(true).await;
    browser
        .client
        .set_window_size(1440, 900)
        .await
        .expect("resize");
    browser.sign_in(&service, &database.admin_password).await;
    browser.wait_until_connected(Duration::from_secs(5)).await;
    let started = Instant::now();
    while browser
        .js("return window.pulseboardSeries.revenue.includes(6000000);")
        .await
        != json!(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no $60,000 point"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past uPlot's layout of the new data (it redraws on the next frame).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The labels as uPlot drew them, measured in the font it drew them with (its font size is
    // in device pixels), against the room the axis leaves them beside its ticks.
    let axis = browser
        .js(r#"
            const u = window.pulseboardCharts.revenue;
            const axis = u.axes[1];
            const context = document.createElement("canvas").getContext("2d");
            context.font = axis.font[0];
            const widths = axis._values.map((v) => context.measureText(v).width / devicePixelRatio);
            return {
                page: window.innerWidth,
                labels: axis._values,
                widest: Math.max(...widths),
                room: axis._size - axis.ticks.size - axis.gap,
                left: axis._pos,
            };
        "#)
        .await;
    browser.screenshot("7-large-revenue-1440").await;
    assert_eq!(axis["page"], 1440, "{axis}");
    let labels = axis["labels"].as_array().expect("labels");
    assert!(
        labels
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("60,000.00"))),
        "the large value is labelled: {axis}"
    );
    let widest = axis["widest"].as_f64().expect("widest");
    let room = axis["room"].as_f64().expect("room");
    assert!(widest <= room, "labels wider than their axis: {axis}");
    assert!(axis["left"].as_f64() >= Some(0.0), "{axis}");
    browser.assert_clean().await;
}

#[tokio::test]
async fn without_javascript_the_signed_in_dashboard_still_shows_the_figures() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "browser-4")).await;
    broker.publish_all(&[order("nojs-1", 4_200)]).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["revenue"]["today_minor"] == 4_200
        })
        .await;

    let browser = Browser::start(false).await;
    browser.sign_in(&service, &database.admin_password).await;
    assert!(browser
        .text("[data-figure='today_minor']")
        .await
        .contains("42.00"));
    assert_eq!(browser.text("[data-figure='orders_per_minute']").await, "1");
    browser.screenshot("4-no-javascript").await;
}

#[tokio::test]
async fn a_stopped_service_shows_reconnecting_then_heals_without_a_gap_and_with_the_missed_announcement(
) {
    let database = TestDatabase::new(Backend::Postgres).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let port = free_port();
    let mut config = ServiceConfig::new(&database, &names, "heal-a");
    config
        .env
        .push(("PULSEBOARD_BIND".into(), format!("127.0.0.1:{port}")));
    config
        .env
        .push(("PULSEBOARD_HEARTBEAT_SECS".into(), "2".into()));
    let mut service = Service::start(&config).await;
    // A second instance on the same database takes the announcement while the first is down.
    let other = Service::start(&ServiceConfig::new(&database, &names, "heal-b")).await;
    service
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["ingest"]["leader"].is_string()
        })
        .await;

    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    browser.wait_until_connected(Duration::from_secs(5)).await;

    service.kill().await;
    let stopped = Instant::now();
    browser
        .wait_for_text("[data-connection-text]", Duration::from_secs(2), |t| {
            t.starts_with("Reconnecting")
        })
        .await;
    assert!(
        stopped.elapsed() <= Duration::from_secs(2),
        "within the heartbeat interval"
    );
    browser.screenshot("2a-reconnecting").await;
    let response = other
        .client()
        .post(other.url("/api/announcements"))
        .json(&json!({"message": "Posted while you were away", "level": "critical"}))
        .send()
        .await
        .expect("announce");
    assert_eq!(response.status(), 201);
    broker.publish_all(&[order("heal-1", 777)]).await;

    drop(service);
    let _service = Service::start(&config).await;
    browser.wait_until_connected(Duration::from_secs(20)).await;
    browser
        .wait_for_text("[data-announcements]", Duration::from_secs(5), |t| {
            t.contains("Posted while you were away")
        })
        .await;
    browser
        .wait_for_text("[data-figure='today_minor']", Duration::from_secs(5), |t| {
            t.contains("7.77")
        })
        .await;
    let gaps = browser
        .js("const x = window.pulseboardSeries.xs; return x.slice(1).filter((v, i) => v - x[i] !== 60).length;")
        .await;
    assert_eq!(gaps, 0, "the chart has a point for every minute");
    browser.screenshot("2b-healed").await;
}

#[tokio::test]
async fn demo_without_a_broker_says_how_to_sign_in_and_moves_within_five_seconds() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &Names::new(), "demo-browser");
    config.args = vec!["serve".into(), "--demo".into()];
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let service = Service::start(&config).await;
    let log = service.log_text();
    assert!(
        log.contains("demo: open http://") && log.contains("sign in as `admin`"),
        "{log}"
    );

    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    let opened = Instant::now();
    let first = browser.text("[data-figure='today_minor']").await;
    browser
        .wait_for_text("[data-figure='today_minor']", Duration::from_secs(5), |t| {
            t != first
        })
        .await;
    let points = browser
        .js("return window.pulseboardSeries.orders.reduce((a, b) => a + b, 0);")
        .await;
    assert!(
        points.as_i64() > Some(0),
        "the chart shows demo orders: {points}"
    );
    assert!(opened.elapsed() < Duration::from_secs(5));
    browser.screenshot("6-demo").await;
    browser.assert_clean().await;
}

/// Runs `line` on the console page and returns the transcript entry's state once it left
/// `sent` (or the one it is in after `timeout`).
async fn run_console_line(browser: &Browser, line: &str) {
    let input = browser
        .client
        .find(Locator::Css("[data-command-input]"))
        .await
        .expect("command line");
    input.send_keys(line).await.expect("type");
    input.send_keys("\u{E007}").await.expect("enter");
}

#[tokio::test]
async fn the_console_page_runs_commands_queues_them_while_down_and_shows_presence() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let port = free_port();
    let mut config = ServiceConfig::new(&database, &names, "page-1");
    config
        .env
        .push(("PULSEBOARD_BIND".into(), format!("127.0.0.1:{port}")));
    let mut service = Service::start(&config).await;

    // An admin (dashboards only) may not open the console.
    let viewer_password = crate::auth::add_user(&database, "viewer", "admin");
    let viewer = crate::helpers::fetch_token(&service.base_url, "viewer", &viewer_password).await;
    let refused = reqwest::Client::new()
        .get(service.url("/console"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("GET /console");
    assert_eq!(refused.status(), 403);

    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    browser.open_console(&service).await;
    run_console_line(&browser, "status").await;
    let reply = browser
        .wait_for_text(
            "[data-transcript] .entry:last-child",
            Duration::from_secs(5),
            |t| t.contains("\"nodes\""),
        )
        .await;
    assert!(
        reply.starts_with(">\nstatus") || reply.contains("status"),
        "{reply}"
    );
    browser
        .wait_for_text("[data-nodes] tbody", Duration::from_secs(10), |t| {
            t.contains("page-1")
        })
        .await;
    browser
        .wait_for_text("[data-presence]", Duration::from_secs(5), |t| {
            t.contains("admin on page-1")
        })
        .await;

    // A second operator connects: presence shows them.
    let password = crate::auth::add_user(&database, "ops2", "operator");
    let token = crate::helpers::fetch_token(&service.base_url, "ops2", &password).await;
    let second = crate::console::Console::open(&service, &token).await;
    browser
        .wait_for_text("[data-presence]", Duration::from_secs(5), |t| {
            t.contains("ops2 on page-1")
        })
        .await;
    browser.screenshot("8a-console-status-presence").await;
    drop(second);

    // Down: a typed command is queued, then sent and answered once the service is back.
    service.kill().await;
    browser
        .wait_for_text("[data-connection-text]", Duration::from_secs(5), |t| {
            t.starts_with("Reconnecting")
        })
        .await;
    run_console_line(&browser, "ping").await;
    browser
        .wait_for_text(
            "[data-transcript] .entry:last-child .state",
            Duration::from_secs(2),
            |t| t == "queued",
        )
        .await;
    browser.screenshot("8b-console-queued").await;
    drop(service);
    let _service = Service::start(&config).await;
    browser
        .wait_for_text(
            "[data-transcript] .entry:last-child",
            Duration::from_secs(20),
            |t| t.contains("\"pong\": true"),
        )
        .await;
    browser
        .wait_for_text("[data-connection-text]", Duration::from_secs(5), |t| {
            t == "Connected"
        })
        .await;
    browser.screenshot("8c-console-reconnected").await;
    browser.assert_clean().await;
}

/// The console page's command line: Tab completes a command name (to the common prefix when
/// several match), ↑/↓ walk the history, and `ingest.pause` and `dlq.purge` wait for a
/// confirmation: cancelled, nothing is sent (nor audited); confirmed, `dlq.purge` goes with
/// `"confirm": true`.
#[tokio::test]
async fn the_console_command_line_completes_walks_its_history_and_confirms_before_acting() {
    const TAB: &str = "\u{E004}";
    const UP: &str = "\u{E013}";
    const DOWN: &str = "\u{E015}";
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let _broker = Broker::connect(&names).await;
    let service = Service::start(&ServiceConfig::new(&database, &names, "page-2")).await;
    service.wait_until_ingesting(Duration::from_secs(15)).await;
    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    browser.open_console(&service).await;
    let input = browser
        .client
        .find(Locator::Css("[data-command-input]"))
        .await
        .expect("command line");
    let last_entry = "[data-transcript] .entry:last-child";

    // Tab: the common prefix of connections.list and connections.kick, then the one command.
    input.send_keys("conn").await.expect("type");
    input.send_keys(TAB).await.expect("tab");
    assert_eq!(browser.value("[data-command-input]").await, "connections.");
    input.send_keys("l").await.expect("type");
    input.send_keys(TAB).await.expect("tab");
    assert_eq!(
        browser.value("[data-command-input]").await,
        "connections.list "
    );
    input.send_keys("\u{E007}").await.expect("enter");
    browser
        .wait_for_text(last_entry, Duration::from_secs(5), |t| {
            t.contains("\"connections\"")
        })
        .await;
    input.send_keys("dlq.pe").await.expect("type");
    input.send_keys(TAB).await.expect("tab");
    input.send_keys(r#"{"limit": 5}"#).await.expect("type");
    input.send_keys("\u{E007}").await.expect("enter");
    browser
        .wait_for_text(last_entry, Duration::from_secs(5), |t| {
            t.contains("\"count\": 0")
        })
        .await;

    // ↑/↓: newest first, back down to an empty line.
    input.send_keys(UP).await.expect("up");
    assert_eq!(
        browser.value("[data-command-input]").await,
        r#"dlq.peek {"limit": 5}"#
    );
    input.send_keys(UP).await.expect("up");
    assert_eq!(
        browser.value("[data-command-input]").await,
        "connections.list"
    );
    input.send_keys(UP).await.expect("up");
    assert_eq!(
        browser.value("[data-command-input]").await,
        "connections.list",
        "the oldest stays"
    );
    input.send_keys(DOWN).await.expect("down");
    assert_eq!(
        browser.value("[data-command-input]").await,
        r#"dlq.peek {"limit": 5}"#
    );
    browser.screenshot("9a-console-history").await;
    input.send_keys(DOWN).await.expect("down");
    assert_eq!(browser.value("[data-command-input]").await, "");

    // Confirmation: cancelled, nothing is sent; confirmed, the page adds `confirm`.
    let confirm_shown = "return !document.querySelector('[data-confirm]').hidden;";
    run_console_line(&browser, "ingest.pause").await;
    assert_eq!(browser.js(confirm_shown).await, json!(true));
    let question = browser.text("[data-confirm-text]").await;
    assert!(question.starts_with("Pause ingestion"), "{question}");
    browser.screenshot("9b-console-confirm").await;
    browser.click("[data-confirm-no]").await;
    assert_eq!(browser.js(confirm_shown).await, json!(false));
    browser
        .wait_for_text(
            &format!("{last_entry} .state"),
            Duration::from_secs(2),
            |t| t == "cancelled",
        )
        .await;
    run_console_line(&browser, "dlq.purge").await;
    assert_eq!(browser.js(confirm_shown).await, json!(true));
    browser.click("[data-confirm-yes]").await;
    browser
        .wait_for_text(last_entry, Duration::from_secs(5), |t| {
            t.contains("\"purged\": 0")
        })
        .await;
    browser.screenshot("9c-console-confirmed").await;

    // What reached the service: the purge, with `confirm`, and no pause.
    let mut console = crate::console::Console::open(&service, service.token()).await;
    let tail = console.ok("audit.tail", json!({"limit": 50})).await;
    let audited: Vec<_> = tail["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["command"].clone(),
                e["payload"].clone(),
                e["outcome"].clone(),
            )
        })
        .collect();
    assert_eq!(
        audited,
        vec![(json!("dlq.purge"), json!({"confirm": true}), json!("ok"))],
        "{tail}"
    );
    let snapshot = service.snapshot().await.expect("snapshot");
    assert_eq!(snapshot["ingest"]["state"], "running", "{snapshot}");
    browser.assert_clean().await;
}

/// The admin's dashboard against yesterday and last week (history seeded in the database),
/// with the overlay toggle remembered across a reload, a late event's minute marked on the
/// charts, the current minute drawn apart as partial, and the status line's "figures include
/// every event received up to …"; on a desktop and a phone.
#[tokio::test]
async fn the_cards_compare_with_yesterday_and_last_week_and_the_charts_overlay_and_mark_revisions()
{
    use crate::compare::{minute_of, seed_minutes, DAY_MS, MINUTE_MS};
    crate::helpers::clear_of_minute_boundary(Duration::from_secs(50)).await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let mut config = ServiceConfig::new(&database, &names, "browser-compare");
    config
        .env
        .push(("PULSEBOARD_TIMEZONE".into(), "UTC".into()));
    let mut service = Service::start(&config).await;
    service.terminate(Duration::from_secs(15)).await;
    // Yesterday 4 orders and 5 users a minute, last week 1 order and 9 users: an hour around
    // the same time, from that day's midnight.
    let now = chrono::Utc::now().timestamp_millis();
    for (days, point) in [(1, (4, 250, 5)), (7, (1, 100, 9))] {
        let then = minute_of(now) - days * DAY_MS;
        let midnight = then - then.rem_euclid(DAY_MS);
        seed_minutes(
            &database,
            midnight - 60 * MINUTE_MS,
            then + 30 * MINUTE_MS,
            point,
        )
        .await;
    }
    let service = Service::start(&config).await;
    broker
        .publish_all(&[order("c1", 1_000), order("c2", 500)])
        .await;
    service
        .wait_for_snapshot(Duration::from_secs(20), |s| {
            s["revenue"]["today_minor"] == 1_500 && !s["compare"]["last_week"].is_null()
        })
        .await;

    let browser = Browser::start(true).await;
    browser.sign_in(&service, &database.admin_password).await;
    browser.wait_until_connected(Duration::from_secs(5)).await;
    // Orders per minute: 2 now against 4 yesterday (down 50 %) and 1 last week (up 100 %).
    let orders = "[data-compare='orders_per_minute']";
    let yesterday = browser
        .wait_for_text(
            &format!("{orders} [data-against='yesterday']"),
            Duration::from_secs(5),
            |t| t != "—",
        )
        .await;
    assert_eq!(yesterday, "▼ −2 (−50 %)");
    assert_eq!(
        browser
            .text(&format!("{orders} [data-against='last_week']"))
            .await,
        "▲ +1 (+100 %)"
    );
    let directions = browser
        .js("return [...document.querySelectorAll(\"[data-compare='orders_per_minute'] dd\")].map(d => [d.dataset.direction, getComputedStyle(d).color]);")
        .await;
    assert_eq!(directions[0][0], "down", "{directions}");
    assert_eq!(directions[1][0], "up", "{directions}");
    assert_ne!(directions[0][1], directions[1][1], "coloured by direction");
    let users = browser
        .text("[data-compare='active_users'] [data-against='last_week']")
        .await;
    assert!(users.starts_with("▼ −8"), "{users}");
    // Status line: the time every received event is in by, and no queue (it is empty).
    let status = browser.text(".status").await;
    let complete = regex_lite_time(&status);
    assert!(complete, "{status}");
    assert!(!status.contains("waiting in the queue"), "{status}");

    // The current minute is drawn apart: the solid line ends at the last whole minute, the
    // dashed one joins it to the current minute's (partial) value.
    let drawn = browser
        .js("const d = window.pulseboardCharts.orders.data; const n = d[0].length; return [d[1][n - 1], d[1][n - 2], d[2][n - 1], d[2].filter(v => v != null).length];")
        .await;
    assert_eq!(drawn[0], Value::Null, "{drawn}");
    assert_eq!(drawn[1], 0, "{drawn}");
    assert_eq!(drawn[2], 2, "{drawn}");
    assert_eq!(drawn[3], 2, "{drawn}");
    browser.screenshot("10a-compare-cards").await;

    // The overlay: yesterday's series, faint, from the history API; remembered.
    browser.click("[data-overlay='1d']").await;
    let overlay_of = "const d = window.pulseboardCharts.orders.data; return [window.pulseboardCharts.orders.series[3].show, d[3].filter(v => v === 4).length, d[3].length];";
    let started = Instant::now();
    let overlaid = loop {
        let overlaid = browser.js(overlay_of).await;
        if overlaid[1].as_u64().unwrap_or(0) >= 30 || started.elapsed() > Duration::from_secs(5) {
            break overlaid;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(overlaid[0], true, "{overlaid}");
    assert!(
        overlaid[1].as_u64().unwrap_or(0) >= 30,
        "yesterday's 4 a minute: {overlaid}"
    );
    browser.screenshot("10b-overlay-yesterday").await;
    browser.client.refresh().await.expect("reload");
    browser.wait_until_connected(Duration::from_secs(5)).await;
    let remembered = browser
        .js("return [localStorage.getItem('pulseboard-compare'), document.querySelector(\"[data-overlay='1d']\").getAttribute('aria-pressed')];")
        .await;
    assert_eq!(remembered, json!(["1d", "true"]));
    browser.click("[data-overlay='7d']").await;
    let started = Instant::now();
    loop {
        let week = browser.js(overlay_of).await;
        let ones = browser
            .js("return window.pulseboardCharts.orders.data[3].filter(v => v === 1).length;")
            .await;
        if ones.as_u64().unwrap_or(0) >= 30 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "last week's overlay: {week}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A late order, three minutes old: its minute is revised and marked on both charts. Its
    // user signed out since (on time), so the order does not make them active at the ends of
    // the minutes the leader closed after it (which would revise those too).
    let late_minute = minute_of(chrono::Utc::now().timestamp_millis() - 180_000) / 1000;
    broker
        .publish_all(&[
            (
                "user.signed_out".to_owned(),
                event("late-c-out", "user.signed_out", 0, "u-late", None),
            ),
            (
                "order.placed".to_owned(),
                event("late-c", "order.placed", 180, "u-late", Some(777)),
            ),
        ])
        .await;
    let started = Instant::now();
    let marked = loop {
        let marked = browser
            .js("return [[...window.pulseboardRevised], [...document.querySelectorAll('.uplot')].map(u => u.dataset.revisedDrawn)];")
            .await;
        if marked[1] == json!(["1", "1"]) || started.elapsed() > Duration::from_secs(10) {
            break marked;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(marked, json!([[late_minute], ["1", "1"]]));
    // The revised minute's point holds the late order: the history was read again, after a
    // random delay of up to 10 s (at most once a minute).
    let started = Instant::now();
    let revised_point = loop {
        let point = browser
            .js(&format!(
                "const s = window.pulseboardSeries; return s.revenue[s.xs.indexOf({late_minute})];"
            ))
            .await;
        if point == json!(777) || started.elapsed() > Duration::from_secs(15) {
            break point;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(revised_point, 777);
    browser
        .js("document.querySelector('.charts').scrollIntoView(); return null;")
        .await;
    browser.screenshot("10c-revised-minute-marked").await;
    browser.js("window.scrollTo(0, 0); return null;").await;

    // Events waiting (ingest paused): the status line says how many, and no longer once
    // they are consumed.
    let mut console = crate::console::Console::open(&service, service.token()).await;
    console.ok("ingest.pause", Value::Null).await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["ingest"]["state"] == "paused"
        })
        .await;
    broker
        .publish_all(&[order("q1", 100), order("q2", 100)])
        .await;
    let waiting = browser
        .wait_for_text(".status", Duration::from_secs(15), |t| {
            t.contains("2 events waiting in the queue")
        })
        .await;
    assert!(regex_lite_time(&waiting), "{waiting}");
    browser.screenshot("10f-queue-waiting").await;
    console.ok("ingest.resume", Value::Null).await;
    browser
        .wait_for_text(".status", Duration::from_secs(15), |t| {
            !t.contains("waiting in the queue")
        })
        .await;
    for (name, width, height) in [
        ("10d-compare-phone", 390, 844),
        ("10e-compare-desktop", 1440, 900),
    ] {
        browser
            .client
            .set_window_size(width, height)
            .await
            .expect("resize");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let overflow = browser
            .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
            .await;
        assert_eq!(overflow, 0, "horizontal overflow at {width}x{height}");
        browser.screenshot(name).await;
    }
    browser.assert_clean().await;

    // The wall screen reuses app.js with cards and charts only: without the status line's
    // parts and the snapshot number, a snapshot (here the one an order makes) must not throw.
    browser
        .js("for (const s of ['[data-complete]', '[data-queue]', '[data-seq]', '[data-ingest-state]', '[data-updated]']) document.querySelector(s)?.remove(); return null;")
        .await;
    broker
        .publish_all(&[(
            "order.placed".to_owned(),
            event("kiosk-a", "order.placed", 0, "u-kiosk", Some(5)),
        )])
        .await;
    let started = Instant::now();
    while browser
        .js("return window.pulseboardSeries.revenue.at(-1);")
        .await
        .as_i64()
        .is_some_and(|r| r % 10 != 5)
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.assert_clean().await;
    drop(browser);

    // Without JavaScript the server renders the same comparisons and status line.
    let plain = Browser::start(false).await;
    plain.sign_in(&service, &database.admin_password).await;
    let cards = plain
        .js("return [...document.querySelectorAll('[data-compare] dd')].map(d => [d.textContent, d.dataset.direction]);")
        .await;
    let cards = cards.as_array().expect("cards");
    assert_eq!(cards.len(), 8, "{cards:?}");
    assert!(cards.iter().all(|c| c[0] != "—"), "{cards:?}");
    // Each says its direction, as the script would: orders now against last week's 1.
    for card in cards {
        let text = card[0].as_str().unwrap_or_default();
        let arrow = match card[1].as_str() {
            Some("up") => "▲ +",
            Some("down") => "▼ −",
            _ => "• ",
        };
        assert!(text.starts_with(arrow) && text.ends_with("%)"), "{cards:?}");
    }
    assert_eq!(cards[3][1], "up", "{cards:?}");
    let status = plain.text(".status").await;
    assert!(regex_lite_time(&status), "{status}");
    plain.screenshot("10g-compare-no-javascript").await;
}

/// "figures include every event received up to HH:MM:SS" in `text`.
fn regex_lite_time(text: &str) -> bool {
    let Some(at) = text.find("figures include every event received up to ") else {
        return false;
    };
    let time: Vec<char> = text[at + 43..].chars().take(8).collect();
    time.len() == 8
        && time.iter().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                *c == ':'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// The wall screen's layout at `width` × `height`: the viewport, whether the page scrolls,
/// the smallest figure's font size, any figure cut off, the background's luminance.
async fn kiosk_layout(browser: &Browser, width: u32, height: u32) -> Value {
    // The window's size, less what the browser keeps for itself, is the viewport's.
    browser
        .client
        .set_window_size(width, height)
        .await
        .expect("resize");
    let inner = browser
        .js("return [window.innerWidth, window.innerHeight];")
        .await;
    let (inner_width, inner_height) = (
        inner[0].as_u64().unwrap_or(0),
        inner[1].as_u64().unwrap_or(0),
    );
    browser
        .client
        .set_window_size(
            2 * width - inner_width as u32,
            2 * height - inner_height as u32,
        )
        .await
        .expect("resize");
    // Past the resize and uPlot's redraw on the next frame.
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser
        .js(r#"
            const values = [...document.querySelectorAll("[data-figure]")];
            const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number);
            return {
                width: window.innerWidth,
                height: window.innerHeight,
                scrolls: document.documentElement.scrollHeight > window.innerHeight + 1,
                smallest_figure_px: Math.min(...values.map((v) => parseFloat(getComputedStyle(v).fontSize))),
                cut: values.filter((v) => v.scrollWidth > v.clientWidth + 1).map((v) => v.textContent),
                offscreen: [...document.querySelectorAll(".figure, .chart")].filter((e) => e.getBoundingClientRect().bottom > window.innerHeight + 1).length,
                clipped_charts: [...document.querySelectorAll(".chart")].filter((c) => c.querySelector(".uplot").getBoundingClientRect().bottom > c.getBoundingClientRect().bottom + 1).length,
                luminance: (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255,
                navigation: document.querySelectorAll("nav, a[href]").length,
            };
        "#)
        .await
}

#[tokio::test]
async fn the_wall_screen_fits_1920x1080_and_1280x720_survives_a_restart_and_shows_a_revoked_link() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let names = Names::new();
    let broker = Broker::connect(&names).await;
    let port = free_port();
    let mut config = ServiceConfig::new(&database, &names, "wall-1");
    config
        .env
        .push(("PULSEBOARD_BIND".into(), format!("127.0.0.1:{port}")));
    let mut service = Service::start(&config).await;
    // Large figures: the widest revenue a screen is likely to show.
    broker
        .publish_all(&[order("wall-1", 123_456_789), order("wall-2", 99_999)])
        .await;
    service
        .wait_for_snapshot(Duration::from_secs(10), |s| {
            s["revenue"]["today_minor"] == 123_556_788
        })
        .await;
    let (url, key) = crate::kiosk::issue(&database, &service, "lobby");

    let browser = Browser::start(true).await;
    browser.client.goto(&url).await.expect("open the link");
    browser
        .wait_for_css("[data-kiosk]", Duration::from_secs(10))
        .await;
    let address = browser.js("return location.href;").await;
    assert_eq!(
        address,
        json!(service.url("/kiosk")),
        "the key left the address bar"
    );
    assert!(!address.to_string().contains(&key));
    browser.wait_until_connected(Duration::from_secs(10)).await;
    browser
        .wait_for_text("[data-figure='today_minor']", Duration::from_secs(5), |t| {
            t.contains("1,235,567.88")
        })
        .await;

    for (width, height, name, least_px) in [
        (1920, 1080, "11a-kiosk-1920x1080", 90.0),
        (1280, 720, "11b-kiosk-1280x720", 60.0),
    ] {
        let layout = kiosk_layout(&browser, width, height).await;
        browser.screenshot(name).await;
        assert_eq!(layout["width"], width, "{layout}");
        assert_eq!(layout["height"], height, "{layout}");
        assert_eq!(layout["scrolls"], false, "{name}: {layout}");
        assert_eq!(
            layout["offscreen"], 0,
            "{name}: every figure and chart on screen: {layout}"
        );
        assert_eq!(layout["cut"], json!([]), "{name}: {layout}");
        assert_eq!(
            layout["clipped_charts"], 0,
            "{name}: the charts fit their boxes: {layout}"
        );
        assert!(
            layout["smallest_figure_px"].as_f64() >= Some(least_px),
            "{name}: figures readable across a room: {layout}"
        );
        assert!(
            layout["luminance"].as_f64() < Some(0.1),
            "{name}: dark: {layout}"
        );
        assert_eq!(layout["navigation"], 0, "{name}: no navigation: {layout}");
    }
    browser.assert_clean().await;

    // An instance restart: a discreet reconnecting line, then live again by itself.
    service.kill().await;
    browser
        .wait_for_text("[data-connection-text]", Duration::from_secs(5), |t| {
            t.starts_with("Reconnecting")
        })
        .await;
    browser.screenshot("11c-kiosk-reconnecting").await;
    drop(service);
    let service = Service::start(&config).await;
    browser.wait_until_connected(Duration::from_secs(40)).await;
    broker.publish_all(&[order("wall-3", 1)]).await;
    browser
        .wait_for_text(
            "[data-figure='today_minor']",
            Duration::from_secs(10),
            |t| t.contains("1,235,567.89"),
        )
        .await;

    // Revoked: the screen says so within the 5 s, and a reload shows the same.
    let revoked = Instant::now();
    crate::kiosk::tokens_command(&database, &["revoke", "lobby"], &service.base_url);
    browser
        .wait_for_text("[data-revoked]", Duration::from_secs(5), |t| {
            t.contains("This screen's link was revoked.")
        })
        .await;
    assert!(revoked.elapsed() < Duration::from_secs(5));
    let figures_shown = browser
        .js("return document.querySelector('.figures').getClientRects().length;")
        .await;
    assert_eq!(figures_shown, 0, "the figures are hidden");
    browser.screenshot("11d-kiosk-revoked").await;
    browser.client.refresh().await.expect("reload");
    browser
        .wait_for_text("[data-revoked]", Duration::from_secs(5), |t| {
            t.contains("This screen's link was revoked.")
        })
        .await;
    let scripts = browser.js("return document.scripts.length;").await;
    assert_eq!(scripts, 0, "the revoked page runs nothing");
}

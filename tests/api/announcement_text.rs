//! Issue 27: an announcement must show what it holds. One made of nothing visible (zero-width
//! characters, direction marks, control characters), or holding a bidirectional override or
//! isolate anywhere, is refused by both transports, `POST /api/announcements` (400, the JSON
//! error) and the console's `announce` (`invalid_payload`), and reaches no dashboard.

use crate::console::Console;
use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};
use serde_json::{json, Value};

const REFUSED: [(&str, &str); 4] = [
    ("\u{200B}\u{200C}\u{200D}\u{FEFF}", "visible"),
    ("\u{200E}\u{7}\u{1B}\u{2060}", "visible"),
    ("pay to \u{202E}0001 tnuocca", "bidirectional"),
    ("deploy \u{2067}at 5\u{2069}", "bidirectional"),
];

#[tokio::test]
async fn announcements_of_nothing_visible_or_with_bidi_overrides_are_refused_by_http_and_console() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let service = Service::start(&ServiceConfig::new(&database, &Names::new(), "banner-1")).await;
    let mut console = Console::open(&service, service.token()).await;
    for (message, why) in REFUSED {
        let response = service
            .client()
            .post(service.url("/api/announcements"))
            .json(&json!({"message": message, "level": "critical"}))
            .send()
            .await
            .expect("POST /api/announcements");
        assert_eq!(response.status(), 400, "{message:?}");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "bad_request", "{message:?}: {body}");
        let text = body["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(why), "{message:?}: {body}");

        let (code, text) = console
            .refused("announce", json!({"message": message, "level": "critical"}))
            .await;
        assert_eq!(code, "invalid_payload", "{message:?}");
        assert!(text.contains(why), "{message:?}: {text}");
    }
    let (status, listed) = service.get_json("/api/announcements?limit=10").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["announcements"],
        json!([]),
        "nothing was announced: {listed}"
    );

    console
        .ok(
            "announce",
            json!({"message": "deploy at 5 \u{200B}", "level": "info"}),
        )
        .await;
}

//! Small things a new user meets on first use (issue 18): the browser's icon request.

use crate::helpers::{Backend, Names, Service, ServiceConfig, TestDatabase};

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

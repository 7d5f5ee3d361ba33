//! Static assets (`static/`), embedded in the binary so that one file deploys.
//!
//! Each file is served with its content type, an ETag made from its content hash (answering
//! `If-None-Match` with 304), and, when asked for by its versioned URL ([`url`]), a year of
//! immutable caching. Compression is left to the `Compress` middleware.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "static/"]
struct Files;

/// The first 8 bytes of the file's SHA-256, in hex: its version.
fn version(name: &str) -> Option<String> {
    Files::get(name).map(|file| {
        file.metadata.sha256_hash()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// `/static/<name>?v=<version>`: the URL pages use, so a new build is fetched at once and an
/// unchanged file is never fetched twice.
pub fn url(name: &str) -> String {
    match version(name) {
        Some(v) => format!("/static/{name}?v={v}"),
        None => format!("/static/{name}"),
    }
}

pub async fn serve(path: web::Path<String>, request: HttpRequest) -> HttpResponse {
    respond(&path.into_inner(), &request)
}

/// `/favicon.ico`: pages name their icon (`<link rel="icon">`, by its versioned URL), but
/// browsers and other clients still ask for this path by convention; it answers with the same
/// SVG (its own content type says what it is), revalidated like any unversioned asset.
pub async fn favicon(request: HttpRequest) -> HttpResponse {
    respond("favicon.svg", &request)
}

fn respond(name: &str, request: &HttpRequest) -> HttpResponse {
    let (Some(file), Some(version)) = (Files::get(name), version(name)) else {
        return actix_web::ResponseError::error_response(&super::PageError::NotFound);
    };
    let etag = format!("\"{version}\"");
    let cache = if request.query_string() == format!("v={version}") {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=0, must-revalidate"
    };
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache));
    if matches {
        return response.finish();
    }
    response
        .content_type(file.metadata.mimetype())
        .body(file.data.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_asset_is_embedded_with_a_version() {
        for name in [
            "app.css",
            "app.js",
            "console.js",
            "favicon.svg",
            "vendor/uplot/uPlot.esm.js",
            "vendor/uplot/uPlot.min.css",
        ] {
            let url = url(name);
            assert!(url.contains("?v="), "{name} is not embedded");
        }
        assert!(
            Files::get("vendor/uplot/LICENSE").is_some(),
            "the vendored licence ships too"
        );
    }
}

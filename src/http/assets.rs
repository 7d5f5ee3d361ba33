//! Static assets (`static/`, and uPlot from `node_modules/`), embedded in the binary so that one
//! file deploys.
//!
//! Each file is served with its content type, an ETag made from its content hash (answering
//! `If-None-Match` with 304), and, when asked for by its versioned URL ([`url`]), a year of
//! immutable caching. Compression is left to the `Compress` middleware.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rust_embed::{Embed, EmbeddedFile};

/// The service's own files.
#[derive(Embed)]
#[folder = "static/"]
struct Files;

/// uPlot as `npm ci` installs it (package.json pins the version); build.rs stops the build with
/// the command to run when it is missing.
#[derive(Embed)]
#[folder = "node_modules/uplot/"]
struct Uplot;

/// The files of the uPlot package that are served, under the names pages use: the rest of the
/// package (other builds, typings) is embedded but never served.
const UPLOT_FILES: [(&str, &str); 3] = [
    ("vendor/uplot/uPlot.esm.js", "dist/uPlot.esm.js"),
    ("vendor/uplot/uPlot.min.css", "dist/uPlot.min.css"),
    ("vendor/uplot/LICENSE", "LICENSE"),
];

/// The asset served as `/static/<name>`.
fn get(name: &str) -> Option<EmbeddedFile> {
    match UPLOT_FILES.iter().find(|(served, _)| *served == name) {
        Some((_, in_package)) => Uplot::get(in_package),
        None => Files::get(name),
    }
}

/// The first 8 bytes of the file's SHA-256, in hex: its version.
fn version(name: &str) -> Option<String> {
    get(name).map(|file| {
        file.metadata.sha256_hash()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// `/static/<name>?v=<version>`: the URL pages use, so a new build is fetched at once and an
/// unchanged file is never fetched twice.
pub(crate) fn url(name: &str) -> String {
    match version(name) {
        Some(v) => format!("/static/{name}?v={v}"),
        None => format!("/static/{name}"),
    }
}

pub(crate) async fn serve(path: web::Path<String>, request: HttpRequest) -> HttpResponse {
    respond(&path.into_inner(), &request)
}

/// `/favicon.ico`: pages name their icon (`<link rel="icon">`, by its versioned URL), but
/// browsers and other clients still ask for this path by convention; it answers with the same
/// SVG (its own content type says what it is), revalidated like any unversioned asset.
pub(crate) async fn favicon(request: HttpRequest) -> HttpResponse {
    respond("favicon.svg", &request)
}

fn respond(name: &str, request: &HttpRequest) -> HttpResponse {
    let (Some(file), Some(version)) = (get(name), version(name)) else {
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
            get("vendor/uplot/LICENSE").is_some(),
            "the vendored licence ships too"
        );
    }

    #[test]
    fn only_the_named_files_of_the_uplot_package_are_served() {
        assert!(get("vendor/uplot/uPlot.d.ts").is_none());
        assert!(get("vendor/uplot/package.json").is_none());
        assert!(get("dist/uPlot.esm.js").is_none());
        assert!(
            Uplot::get("dist/uPlot.d.ts").is_some(),
            "the package is there"
        );
    }
}

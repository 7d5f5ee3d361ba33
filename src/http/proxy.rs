//! What a request says about its client and about the address it was sent to, with or without
//! a trusted reverse proxy in front (`PULSEBOARD_TRUST_PROXY`, see docs/api.md, Configuration).
//!
//! `X-Forwarded-*` headers are plain request headers: anyone can send them. They are read only
//! when the operator says a proxy sets them; otherwise the peer address and the `Host` header
//! are the truth. Of a comma list the last entry counts: it is the one the proxy next to us
//! added (a proxy that appends keeps whatever the client sent before it).
//!
//! The RFC 7239 `Forwarded` header is not read; see docs/security.md.

use actix_web::http::header;
use actix_web::HttpRequest;
use std::net::IpAddr;

const FORWARDED_FOR: &str = "x-forwarded-for";
const FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The client's IP address, for throttling and logs: the peer's, or with a trusted proxy the
/// address it forwarded (the peer's when it sent none that parses).
pub(crate) fn client_address(request: &HttpRequest, trust_proxy: bool) -> String {
    let forwarded = trust_proxy
        .then(|| last_entry(request, FORWARDED_FOR))
        .flatten()
        .and_then(|text| text.parse::<IpAddr>().ok());
    forwarded
        .or_else(|| request.peer_addr().map(|a| a.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The origin (`scheme://host[:port]`) this request was addressed to: what a browser on this
/// service's own pages sends as `Origin`. `tls`: the service itself speaks HTTPS.
pub(crate) fn own_origin(request: &HttpRequest, trust_proxy: bool, tls: bool) -> Option<String> {
    let own_scheme = if tls { "https" } else { "http" };
    let (scheme, host) = if trust_proxy {
        let scheme = last_entry(request, FORWARDED_PROTO)
            .filter(|p| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https"))
            .unwrap_or(own_scheme);
        let host = last_entry(request, FORWARDED_HOST).or_else(|| host_header(request));
        (scheme, host)
    } else {
        (own_scheme, host_header(request))
    };
    host.map(|host| format!("{}://{}", scheme.to_ascii_lowercase(), host))
}

/// `Host` (HTTP/1.1), else the request target's authority (HTTP/2 `:authority`).
fn host_header(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .map(str::trim)
        .filter(|host| !host.is_empty())
}

/// The last non-empty comma-separated entry of the last such header.
fn last_entry<'r>(request: &'r HttpRequest, name: &str) -> Option<&'r str> {
    request
        .headers()
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|entry| !entry.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn request() -> HttpRequest {
        TestRequest::default()
            .peer_addr("10.0.0.7:50000".parse().expect("address"))
            .insert_header((header::HOST, "board.internal:8080"))
            .insert_header((FORWARDED_FOR, "6.6.6.6, 203.0.113.9"))
            .insert_header((FORWARDED_HOST, "board.example"))
            .insert_header((FORWARDED_PROTO, "https"))
            .to_http_request()
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_the_proxy_is_trusted() {
        let request = request();
        assert_eq!(client_address(&request, false), "10.0.0.7");
        assert_eq!(
            own_origin(&request, false, false).as_deref(),
            Some("http://board.internal:8080")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_the_origin_with_its_own_last_entry() {
        let request = request();
        assert_eq!(client_address(&request, true), "203.0.113.9");
        assert_eq!(
            own_origin(&request, true, false).as_deref(),
            Some("https://board.example")
        );
    }

    #[test]
    fn a_trusted_proxy_without_usable_headers_falls_back_to_the_peer_and_host() {
        let request = TestRequest::default()
            .peer_addr("10.0.0.7:50000".parse().expect("address"))
            .insert_header((header::HOST, "board.internal"))
            .insert_header((FORWARDED_FOR, "not-an-address"))
            .insert_header((FORWARDED_PROTO, "gopher"))
            .to_http_request();
        assert_eq!(client_address(&request, true), "10.0.0.7");
        assert_eq!(
            own_origin(&request, true, true).as_deref(),
            Some("https://board.internal")
        );
    }
}

//! Where a sign-in may send the browser next: only a path on this site (no open redirect).
//!
//! `next` comes from the query or the form, already percent-decoded once. It is kept only when
//! it is a same-origin absolute path: one leading `/`, not followed by `/` or `\` (which
//! browsers read as the start of another host), no `\` at all, and no control character (which
//! browsers strip, so `/<TAB>/evil.example/` would become `//evil.example/`). The rules hold for
//! the value and for every further percent-decoding of it, so that no layer that decodes once
//! more can turn it into an off-site address. Anything else becomes `/`.
//!
//! The value returned always fits in a `Location` header: bytes outside visible ASCII (spaces,
//! non-ASCII letters) are percent-encoded; a browser decodes them back to the same path.

/// Percent-decoding rounds looked through; more nesting than this is refused outright.
const MAX_DECODING_ROUNDS: usize = 4;

/// A safe redirect target for `next`, or `/`.
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if is_local_path_at_every_decoding(path) => encode_for_header(path),
        _ => "/".to_owned(),
    }
}

/// The rules hold for `path` and each percent-decoding of it until decoding changes nothing.
fn is_local_path_at_every_decoding(path: &str) -> bool {
    let mut current = path.to_owned();
    for _ in 0..=MAX_DECODING_ROUNDS {
        if !is_local_path(&current) {
            return false;
        }
        match percent_decode(&current) {
            // Invalid UTF-8 once decoded: no path of ours, and no use guessing what a browser does.
            None => return false,
            Some(decoded) if decoded == current => return true,
            Some(decoded) => current = decoded,
        }
    }
    false
}

/// One leading `/` not followed by `/` or `\`, no `\`, no control character.
fn is_local_path(path: &str) -> bool {
    let mut bytes = path.bytes();
    bytes.next() == Some(b'/')
        && !matches!(bytes.next(), Some(b'/' | b'\\'))
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits stays as it is (as browsers
/// do). `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 3).and_then(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        });
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// Visible ASCII stays; every other byte (space, UTF-8 of non-ASCII letters) becomes `%XX`.
fn encode_for_header(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_graphic() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::safe_next;
    use actix_web::http::header::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn paths_on_this_site_are_kept() {
        for path in [
            "/",
            "/console",
            "/ok?x=1",
            "/?x=1",
            "/a/b#c",
            "/100%",
            "/%2e%2e/x",
        ] {
            assert_eq!(safe_next(Some(path)), path, "{path}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn other_hosts_and_control_characters_fall_back_to_the_root() {
        for evil in [
            "/\t/evil.example/",
            "//evil",
            "//evil.example",
            "/\\evil",
            "/a\\b",
            "%2F%2Fevil",
            "/%2F%2Fevil",
            "/%2f%5cevil",
            "/%09/evil.example/",
            "/%2509/evil.example/",
            "https://evil.example",
            "evil",
            "",
            "/\n",
            "/\r\nSet-Cookie: x=1",
            "/\u{b}",
            "/%0A",
            "/%0D%0A",
            "/%0B",
            "/\u{85}",
            "/%FF",
            "/%25252525252525252541",
        ] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil:?}");
        }
    }

    #[test]
    fn bytes_outside_visible_ascii_are_encoded_for_the_header() {
        assert_eq!(safe_next(Some("/café")), "/caf%C3%A9");
        assert_eq!(safe_next(Some("/a b")), "/a%20b");
        // The encoded form passes again unchanged: the login form can carry it round.
        assert_eq!(safe_next(Some("/caf%C3%A9")), "/caf%C3%A9");
    }

    /// Inputs rich in what redirect tricks are made of, and arbitrary text besides.
    fn next_values() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("\\".to_owned()),
            Just("%".to_owned()),
            Just("%2F".to_owned()),
            Just("%5C".to_owned()),
            Just("%09".to_owned()),
            Just("%25".to_owned()),
            Just("\t".to_owned()),
            Just("\n".to_owned()),
            Just(":".to_owned()),
            Just("@".to_owned()),
            Just("?".to_owned()),
            Just("#".to_owned()),
            Just(".".to_owned()),
            Just("evil.example".to_owned()),
            Just("http:".to_owned()),
            any::<char>().prop_map(String::from),
        ];
        prop_oneof![
            prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        #[test]
        fn no_input_leaves_the_origin_or_breaks_the_header(next in next_values()) {
            let location = safe_next(Some(&next));
            prop_assert!(HeaderValue::from_str(&location).is_ok(), "{location:?}");
            prop_assert!(location.bytes().all(|b| b.is_ascii_graphic()), "{location:?}");
            let base = url::Url::parse("http://example.test/").expect("a valid base");
            let resolved = base.join(&location).expect("a path resolves against the base");
            prop_assert_eq!(resolved.scheme(), "http");
            prop_assert_eq!(resolved.host_str(), Some("example.test"), "{:?}", location);
            prop_assert_eq!(resolved.port(), None);
            prop_assert_eq!(safe_next(Some(&location)), location.clone(), "idempotent");
        }
    }
}

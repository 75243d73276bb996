//! ARI paths and query values built from ids and names: pure, no IO.
//!
//! Every id that goes into a REST path (a channel's, a bridge's, our application's name) is one
//! path segment, percent-encoded here, so that whatever it holds (`/`, `?`, `#`, `%`, `+`,
//! spaces, dots, any UTF-8) it names that resource and nothing else: ids come from events and
//! listings, and another application on the same Asterisk chooses its own.
//!
//! How Asterisk 22 reads a path (`res_ari.c`, `ast_ari_invoke`, for `/ari/...`, which the HTTP
//! server hands over undecoded): it splits the raw path at `/`, stops at the first empty
//! segment, and decodes each segment with `ast_uri_decode` in its legacy mode: `%XX` is that
//! byte and `+` is a space. Query values are decoded the same way. Hence:
//! - everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) is encoded, `+`
//!   included (left as is it would arrive as a space);
//! - the dot segments `.` and `..` are encoded in full (`%2E`), so that nothing between us and
//!   Asterisk (awc, a proxy) resolves them as "this" or "parent" level;
//! - an empty id is refused: `/bridges//addChannel` would stop at `/bridges`, and POST there
//!   creates a bridge.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What stays unencoded: RFC 3986 section 2.3's unreserved characters.
const UNRESERVED_ONLY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why an id cannot go into a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// ARI stops reading a path at its first empty segment: the request would address the
    /// level above (for `POST /bridges//addChannel`: create a bridge).
    #[error("an empty id names nothing (the path would address the level above)")]
    EmptyId,
}

/// `id` as one path segment of an ARI URL.
pub fn segment(id: &str) -> Result<String, PathError> {
    match id {
        "" => Err(PathError::EmptyId),
        "." => Ok("%2E".into()),
        ".." => Ok("%2E%2E".into()),
        _ => Ok(utf8_percent_encode(id, UNRESERVED_ONLY).to_string()),
    }
}

/// `value` as a query parameter's value (`app=` of the events URL).
pub fn query_value(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED_ONLY).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ast_uri_decode(s, ast_uri_http_legacy)` (main/utils.c): `+` is a space, `%XX` a byte.
    fn asterisk_decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).expect("we only write valid %XX"));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        out
    }

    /// The segments ARI routes `path` (after `/ari`) by: split at `/`, up to the first empty
    /// one, each decoded (res_ari.c `ast_ari_invoke`).
    fn asterisk_route(path: &str) -> Vec<Vec<u8>> {
        path.strip_prefix('/')
            .expect("absolute")
            .split('/')
            .take_while(|s| !s.is_empty())
            .map(asterisk_decode)
            .collect()
    }

    /// The path as awc sends it, through `http::Uri` (which must take it unchanged: no
    /// normalisation, no query, no fragment).
    fn as_sent(path: &str) -> String {
        let uri: awc::http::Uri = format!("http://127.0.0.1:8088/ari{path}").parse().expect("a valid URI");
        assert_eq!(uri.query(), None, "{path}");
        uri.path().strip_prefix("/ari").expect("prefix kept").to_string()
    }

    fn route_of(id: &str) -> Vec<Vec<u8>> {
        let path = format!("/channels/{}/answer", segment(id).unwrap());
        assert_eq!(as_sent(&path), path, "sent unchanged");
        asterisk_route(&path)
    }

    #[test]
    fn odd_ids_stay_one_segment() {
        for id in [
            "a/b", "a?b=c", "a#frag", "50%", "%2F", "a b", "a+b", ".", "..", "../bridges", "./x", "...",
            "é-ü-日本", "tab\there", "new\nline", "semi;colon", "1700000000.12", "x;2", "~user",
        ] {
            let route = route_of(id);
            assert_eq!(route, vec![b"channels".to_vec(), id.as_bytes().to_vec(), b"answer".to_vec()], "{id:?}");
        }
    }

    #[test]
    fn ordinary_ids_are_left_readable() {
        assert_eq!(segment("1700000000.12").unwrap(), "1700000000.12");
        assert_eq!(segment("rtpvisor-br-8-rtpvisor-3-abc").unwrap(), "rtpvisor-br-8-rtpvisor-3-abc");
        assert_eq!(segment("a_b~c").unwrap(), "a_b~c");
    }

    #[test]
    fn reserved_characters_are_encoded() {
        assert_eq!(segment("a/b").unwrap(), "a%2Fb");
        assert_eq!(segment("a b+c").unwrap(), "a%20b%2Bc", "+ would arrive as a space");
        assert_eq!(segment("?#%").unwrap(), "%3F%23%25");
        assert_eq!(segment("é").unwrap(), "%C3%A9", "UTF-8 bytes");
        assert_eq!(segment(".").unwrap(), "%2E");
        assert_eq!(segment("..").unwrap(), "%2E%2E");
        assert_eq!(segment("...").unwrap(), "...", "not a dot segment");
        assert_eq!(query_value("my app+1&x=y"), "my%20app%2B1%26x%3Dy");
    }

    #[test]
    fn an_empty_id_is_refused() {
        assert_eq!(segment(""), Err(PathError::EmptyId));
        // What it would have done: `/bridges//addChannel` routes to `/bridges`.
        assert_eq!(asterisk_route("/bridges//addChannel"), vec![b"bridges".to_vec()]);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_id_routes_to_itself(id in "\\PC{1,40}|[./%?#+ a-z]{1,8}") {
                let path = format!("/bridges/{}/addChannel", segment(&id).unwrap());
                prop_assert_eq!(as_sent(&path), path.clone());
                prop_assert_eq!(
                    asterisk_route(&path),
                    vec![b"bridges".to_vec(), id.as_bytes().to_vec(), b"addChannel".to_vec()]
                );
            }

            #[test]
            fn encoded_ids_hold_only_unreserved_characters_and_escapes(id in any::<String>()) {
                prop_assume!(!id.is_empty());
                let s = segment(&id).unwrap();
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{}", s);
                prop_assert!(s != "." && s != "..");
                prop_assert_eq!(asterisk_decode(&s), id.as_bytes().to_vec());
                prop_assert_eq!(asterisk_decode(&query_value(&id)), id.as_bytes().to_vec());
            }
        }
    }
}

//! The sticky cookie: opaque server ids, reading the cookie from a request, removing it
//! before the request goes upstream, and writing `Set-Cookie`.
//!
//! A server's id is a keyed hash (HMAC-SHA256) of its name with the secret from the
//! environment, or a plain SHA-256 of the name without one. It never reveals an address,
//! and every edgepin with the same config computes the same ids. A value that matches no
//! server of the backend is ignored, never trusted.

use ring::{digest, hmac};

use crate::config::SameSite;

/// Length of a cookie id in hex characters (64 bits).
const ID_HEX_LEN: usize = 16;

/// The cookie id of server `name`.
pub fn server_id(name: &str, secret: Option<&[u8]>) -> String {
    let input = format!("edgepin-server:{name}");
    let mac: Vec<u8> = match secret {
        Some(key) => hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes())
            .as_ref()
            .to_vec(),
        None => digest::digest(&digest::SHA256, input.as_bytes()).as_ref().to_vec(),
    };
    let mut hex = String::with_capacity(ID_HEX_LEN);
    for b in &mac[..ID_HEX_LEN / 2] {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    hex
}

/// The value of cookie `name` in one `Cookie` header value (`a=1; b=2`).
pub fn find<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    pairs(header).find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| v)
}

/// `header` without cookie `name`; `None` when nothing else is left.
/// Every other cookie is kept byte for byte (quotes, empty values, flags), in order.
pub fn strip(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(header.len());
    for pair in segments(header) {
        if pair_name(pair) == name.as_bytes() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    (!out.is_empty()).then_some(out)
}

/// The `name=value` pairs of a Cookie header, trimmed, empty ones left out.
fn segments(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header.split(|&b| b == b';').map(trim).filter(|p| !p.is_empty())
}

fn pair_name(pair: &[u8]) -> &[u8] {
    match pair.iter().position(|&b| b == b'=') {
        Some(i) => trim(&pair[..i]),
        None => pair,
    }
}

fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    segments(header).map(|pair| match pair.iter().position(|&b| b == b'=') {
        Some(i) => (trim(&pair[..i]), unquote(trim(&pair[i + 1..]))),
        None => (pair, &pair[pair.len()..]),
    })
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn unquote(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

/// The `Set-Cookie` value that pins a client to server id `id`.
pub fn set_cookie(name: &str, id: &str, secure: bool, same_site: SameSite) -> String {
    // SameSite=None is only honoured by browsers on Secure cookies.
    let same_site = if same_site == SameSite::None && !secure {
        SameSite::Lax
    } else {
        same_site
    };
    let mut v = format!("{name}={id}; Path=/; HttpOnly; SameSite={}", same_site.as_str());
    if secure {
        v.push_str("; Secure");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_opaque_and_keyed() {
        let plain = server_id("w1", None);
        assert_eq!(plain.len(), 16);
        assert_eq!(plain, server_id("w1", None), "same config, same id");
        assert_ne!(plain, server_id("w2", None));
        let keyed = server_id("w1", Some(b"secret"));
        assert_ne!(keyed, plain);
        assert_ne!(keyed, server_id("w1", Some(b"other")));
        assert!(!keyed.contains("w1"));
    }

    #[test]
    fn finds_cookie_among_others() {
        let h = b"a=1; EDGEPIN=abc;b=\"q\"";
        assert_eq!(find(h, "EDGEPIN"), Some(&b"abc"[..]));
        assert_eq!(find(h, "b"), Some(&b"q"[..]));
        assert_eq!(find(h, "EDGE"), None);
        assert_eq!(find(b"", "EDGEPIN"), None);
    }

    #[test]
    fn strips_only_our_cookie() {
        assert_eq!(strip(b"a=1; EDGEPIN=abc; b=2", "EDGEPIN").unwrap(), b"a=1; b=2");
        assert_eq!(strip(b"EDGEPIN=abc", "EDGEPIN"), None);
        assert_eq!(strip(b"EDGEPINX=1", "EDGEPIN").unwrap(), b"EDGEPINX=1");
        assert_eq!(strip(b"flag; e=; EDGEPIN=1", "EDGEPIN").unwrap(), b"flag; e=");
        // Found by the property test: quotes of other cookies used to be dropped.
        assert_eq!(strip(b"a=\"x\"; EDGEPIN=1", "EDGEPIN").unwrap(), b"a=\"x\"");
    }

    #[test]
    fn set_cookie_attributes() {
        assert_eq!(
            set_cookie("EDGEPIN", "00ff", true, SameSite::Lax),
            "EDGEPIN=00ff; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        assert_eq!(
            set_cookie("E", "1", false, SameSite::None),
            "E=1; Path=/; HttpOnly; SameSite=Lax",
            "SameSite=None needs Secure"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Cookie-ish headers: names and values from a small alphabet with the
        /// separators, quotes and spaces that parsing must get right.
        fn header() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(
                    prop_oneof![
                        Just(b'E'),
                        Just(b'a'),
                        Just(b'='),
                        Just(b';'),
                        Just(b' '),
                        Just(b'"'),
                        Just(b'\t')
                    ],
                    0..48
                ),
                proptest::collection::vec(("(EDGEPIN|E|a|b|_ga)", "[a-z0-9\"=]{0,6}", "[ ;]{0,3}"), 0..6).prop_map(
                    |ps| ps
                        .iter()
                        .flat_map(|(k, v, sep)| format!("{k}={v};{sep}").into_bytes())
                        .collect()
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn strip_removes_exactly_our_cookie_and_keeps_the_rest_byte_for_byte(h in header(), name in "(EDGEPIN|E|a)") {
                let stripped = strip(&h, &name);
                let kept: Vec<&[u8]> = segments(&h).filter(|p| pair_name(p) != name.as_bytes()).collect();
                match &stripped {
                    None => prop_assert!(kept.is_empty()),
                    Some(s) => {
                        prop_assert_eq!(find(s, &name), None);
                        prop_assert_eq!(segments(s).collect::<Vec<_>>(), kept);
                        let again = strip(s, &name);
                        prop_assert_eq!(again.as_ref(), Some(s), "idempotent");
                    }
                }
            }

            #[test]
            fn find_returns_our_value_wherever_it_is(
                others in proptest::collection::vec(("[a-z_]{1,8}", "[A-Za-z0-9\"%]{0,10}"), 0..5),
                at in 0usize..6,
                value in "[0-9a-f]{16}",
                space in "[ \t]{0,2}",
            ) {
                let mut parts: Vec<String> = others.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.insert(at.min(parts.len()), format!("EDGEPIN{space}={space}{value}"));
                let h = parts.join(";").into_bytes();
                prop_assert_eq!(find(&h, "EDGEPIN"), Some(value.as_bytes()));
            }
        }
    }
}

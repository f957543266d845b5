//! The HTTP/1 field rules both directions share, in one place: the tokens of a list value,
//! what `Connection` says and which fields it makes this hop's only, and `Content-Length`
//! (strict from clients; from servers, identical duplicates are one length, RFC 9110 §8.6).
//! Used by the request head (`h1::head`), the server's answer head (`upstream::head`) and the
//! rewrite of that answer for the client (`h1::response`, `h2::answer`); nothing here allocates.

/// The comma-separated tokens of a header value.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the `Connection` values of a message say about the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connection {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// It names other fields (this hop's only: [`names`]).
    pub names_fields: bool,
}

impl Connection {
    /// Take one `Connection` value into account.
    pub fn read(&mut self, value: &[u8]) {
        for t in tokens(value) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_fields = true;
            }
        }
    }
}

/// The field names a `Connection` value makes this hop's only (RFC 9110 §7.6.1): its
/// tokens other than `close`, `keep-alive` and `upgrade`.
pub fn names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    tokens(value).filter(|t| {
        !t.eq_ignore_ascii_case(b"close")
            && !t.eq_ignore_ascii_case(b"keep-alive")
            && !t.eq_ignore_ascii_case(b"upgrade")
    })
}

/// Fields that are always this hop's only, whatever `Connection` says (RFC 9110 §7.6.1):
/// `Keep-Alive`, `Proxy-Connection`, `TE`. `Connection`, `Upgrade` and the framing fields
/// have rules of their own in each direction.
pub fn hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        2 => is(b"te"),
        10 => is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        _ => false,
    }
}

/// A client's `Content-Length`: digits only (no list, no sign, no spaces inside), at
/// most 19 of them.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A server's `Content-Length`: one length, or a list of the same length (`5, 5`), which
/// RFC 9110 §8.6 lets a recipient take as that length. Different values, or anything
/// that is not a length, are `None`.
pub fn content_length_list(v: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in v.split(|&b| b == b',') {
        let n = content_length(item)?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_says_what_it_says_and_names_the_rest() {
        let mut c = Connection::default();
        c.read(b"Keep-Alive, X-Secret");
        c.read(b" upgrade ,close");
        assert_eq!(
            c,
            Connection {
                close: true,
                keep_alive: true,
                upgrade: true,
                names_fields: true
            }
        );
        let named: Vec<&[u8]> = names(b"close, X-A ,keep-alive, x-b, Upgrade").collect();
        assert_eq!(named, vec![&b"X-A"[..], b"x-b"]);
    }

    #[test]
    fn hop_by_hop_fields_are_known_by_name() {
        for name in ["TE", "Keep-Alive", "proxy-connection"] {
            assert!(hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["connection", "upgrade", "te-x", "host", "transfer-encoding"] {
            assert!(!hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn content_length_is_strict_from_clients_and_merged_from_servers() {
        assert_eq!(content_length(b" 12 "), Some(12));
        for bad in [&b""[..], b"+5", b"5, 5", b"0x5", b"1 2", b"99999999999999999999"] {
            assert_eq!(content_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(content_length_list(b"5, 5"), Some(5));
        assert_eq!(content_length_list(b"5,5 ,5"), Some(5));
        assert_eq!(content_length_list(b"7"), Some(7));
        assert_eq!(content_length_list(b"5, 6"), None);
        assert_eq!(content_length_list(b"5,"), None);
        assert_eq!(content_length_list(b""), None);
    }
}

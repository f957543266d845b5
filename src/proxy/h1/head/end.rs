//! Where a request head ends: the blank line after the request line, searched in the new
//! bytes only as a head arrives, and how many bytes may be read before it is refused.

use super::MAX_REQUEST_LINE;

/// Where the search for the end of a head (its blank line) left off, so that a head
/// arriving in many small reads is searched once, not parsed again from its first byte
/// after every read: only a blank line makes a parse worth trying. Empty lines before the
/// request line (which the parser skips, RFC 9112 §2.2) are not taken for the end.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadEnd {
    /// Where the request line starts, once a byte other than CR or LF has come.
    start: Option<usize>,
    /// Bytes searched so far.
    searched: usize,
}

impl HeadEnd {
    /// Whether the bytes of `input` (a head from its first byte, grown since the last
    /// call) now hold a blank line after the request line — or a bare CR, which no valid
    /// head has (RFC 9112 §2.2), so that the parser refuses it at once instead of the
    /// client waiting for `timeouts.header`. Looks at new bytes only.
    pub fn found(&mut self, input: &[u8]) -> bool {
        let start = match self.start {
            Some(s) => s,
            None => match input.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                Some(s) => *self.start.insert(s),
                None => {
                    self.searched = input.len();
                    return false;
                }
            },
        };
        // A line end that began in the bytes searched before may end in the new ones.
        let from = self.searched.saturating_sub(2).max(start);
        self.searched = input.len();
        let tail = &input[from.min(input.len())..];
        tail.iter().enumerate().any(|(i, &b)| match b {
            b'\n' => matches!(&tail[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]),
            b'\r' => matches!(tail.get(i + 1), Some(&next) if next != b'\n'),
            _ => false,
        })
    }
}

/// Bytes that may be read for a head before it is refused with 431.
pub fn head_limit(max_header_bytes: usize) -> usize {
    max_header_bytes + MAX_REQUEST_LINE
}

#[cfg(test)]
mod tests {
    use super::super::Head;
    use super::*;

    #[test]
    fn the_end_of_a_head_is_searched_once_in_the_new_bytes() {
        let head = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nGET /next";
        let end = head.len() - b"GET /next".len();
        // Dripped byte by byte: found exactly once, when the blank line is complete.
        let mut scan = HeadEnd::default();
        let hits: Vec<usize> = (1..=head.len()).filter(|&n| scan.found(&head[..n])).collect();
        assert_eq!(
            hits.first(),
            Some(&end),
            "at the head's end, not at the leading blank lines"
        );
        assert!(hits.iter().all(|&n| n >= end));
        // In any two pieces.
        for split in 1..end {
            let mut scan = HeadEnd::default();
            let early = scan.found(&head[..split]);
            assert!(!early, "split {split}");
            assert!(scan.found(&head[..end]), "split {split}");
        }
        // Bare LF line ends (the parser decides what to make of them).
        let mut scan = HeadEnd::default();
        assert!(scan.found(b"GET / HTTP/1.1\nHost: a\n\n"));
        // A bare CR ends the wait: the parser refuses it (it waited for `timeouts.header`).
        let cr = b"GET / HTTP/1.1\rHost: a\r\r\n";
        let mut scan = HeadEnd::default();
        assert!(!scan.found(&cr[..15]), "a CR at the end may be followed by LF");
        assert!(scan.found(&cr[..16]));
        assert_eq!(Head::default().parse(cr, 1024).unwrap_err().status, 400);
        // A long head dripped in small pieces is searched in linear time.
        let mut long = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..400 {
            long.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(30)).as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        let mut scan = HeadEnd::default();
        let found: Vec<usize> = (1..=long.len())
            .step_by(7)
            .chain([long.len()])
            .filter(|&n| scan.found(&long[..n]))
            .collect();
        assert_eq!(found, vec![long.len()]);
    }
}

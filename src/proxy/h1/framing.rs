//! Where an HTTP/1 message body ends: by length, by chunked framing, or at the close of
//! the connection. The engine streams body bytes through unchanged and uses this to know
//! how many of the bytes it holds belong to the body (the rest is the next pipelined
//! request, or bytes a server should not have sent).
//!
//! The chunked parser is strict (RFC 9112 §7.1): hex sizes of at most 15 digits, CRLF
//! line ends (a bare LF is an error), extensions of visible characters only, CRLF after
//! each chunk's data, all bounded. A lenient parser on one side of a proxy and a strict
//! one on the other is how requests are smuggled.
//!
//! Two bounds are per message, not per chunk, because the engine forwards the framing as
//! it came and `limits.max_body_bytes` counts decoded data: chunk extensions (with the
//! whitespace after a size) may take [`MAX_EXTENSIONS`] bytes in all, as in hyper, so a
//! thousand one-byte chunks cannot carry megabytes of extensions past the limit; and
//! trailers [`MAX_TRAILERS`]. Trailer lines are header fields (RFC 9112 §7.1.2): a token
//! name (no `_`, as `head` drops those), a colon, a value of visible characters; never a
//! field that frames or routes a message (`Content-Length`, `Transfer-Encoding`, `Host`,
//! RFC 9110 §6.5.1). So a line such as `GET /admin HTTP/1.1` can never reach a server as
//! a trailer.

use std::ops::Range;

/// Chunk extensions and the whitespace after chunk sizes, all chunks of a body together.
pub const MAX_EXTENSIONS: usize = 16 * 1024;
/// All trailer lines of a body together.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Trailer names refused: they frame or route a message (RFC 9110 §6.5.1).
const FORBIDDEN_TRAILERS: &[&[u8]] = &[b"content-length", b"transfer-encoding", b"host"];
/// Bytes of a trailer's name kept to compare with [`FORBIDDEN_TRAILERS`].
const NAME_KEPT: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError(pub &'static str);

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: spaces, then `;` or CR.
    AfterSize {
        size: u64,
    },
    /// In an extension.
    Extension {
        size: u64,
    },
    /// CR seen after the size line; LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer's field name.
    TrailerName,
    /// After a trailer's colon.
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The framing of one body, advanced as its bytes go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `left` bytes still to come.
    Length {
        left: u64,
    },
    Chunked {
        state: ChunkState,
    },
    /// Until the connection closes (responses only).
    Close,
}

/// The chunked parser's state (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkState {
    chunk: Chunk,
    /// Extension and after-size whitespace bytes of the whole body.
    extension_bytes: usize,
    trailer_bytes: usize,
    /// The current trailer's name, lowercase, its first [`NAME_KEPT`] bytes.
    name: [u8; NAME_KEPT],
    name_len: usize,
    /// Data bytes seen so far (the decoded length).
    pub data: u64,
}

/// What one call to [`Framing::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// Bytes of the input that belong to the body.
    pub used: usize,
    /// The body ends with them.
    pub done: bool,
}

impl Framing {
    pub fn length(n: u64) -> Framing {
        Framing::Length { left: n }
    }

    pub fn chunked() -> Framing {
        Framing::Chunked {
            state: ChunkState {
                chunk: Chunk::Size { size: 0, digits: 0 },
                extension_bytes: 0,
                trailer_bytes: 0,
                name: [0; NAME_KEPT],
                name_len: 0,
                data: 0,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length { left } => *left == 0,
            Framing::Chunked { state } => state.chunk == Chunk::Done,
            Framing::Close => false,
        }
    }

    /// Bytes of body decoded so far beyond what the framing itself takes (chunked only).
    pub fn decoded(&self) -> Option<u64> {
        match self {
            Framing::Chunked { state } => Some(state.data),
            _ => None,
        }
    }

    /// Take the next bytes of the stream; `on_data` gets the ranges of `input` that are
    /// payload (for chunked, without the framing), to decode a body if wanted.
    pub fn advance(&mut self, input: &[u8], mut on_data: impl FnMut(Range<usize>)) -> Result<Advance, FramingError> {
        match self {
            Framing::Length { left } => {
                let used = (*left).min(input.len() as u64) as usize;
                *left -= used as u64;
                if used > 0 {
                    on_data(0..used);
                }
                Ok(Advance { used, done: *left == 0 })
            }
            Framing::Close => {
                if !input.is_empty() {
                    on_data(0..input.len());
                }
                Ok(Advance {
                    used: input.len(),
                    done: false,
                })
            }
            Framing::Chunked { state } => state.advance(input, on_data),
        }
    }
}

impl ChunkState {
    fn advance(&mut self, input: &[u8], mut on_data: impl FnMut(Range<usize>)) -> Result<Advance, FramingError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.chunk = match self.chunk {
                Chunk::Done => break,
                Chunk::Data { left } => {
                    let take = left.min((input.len() - i) as u64) as usize;
                    on_data(i..i + take);
                    self.data += take as u64;
                    i += take;
                    let left = left - take as u64;
                    self.chunk = if left == 0 { Chunk::DataCr } else { Chunk::Data { left } };
                    continue;
                }
                Chunk::Size { size, digits } => match hex(b) {
                    Some(d) if digits < 15 => Chunk::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(FramingError("chunk size too large")),
                    None if digits == 0 => return Err(FramingError("chunk size missing")),
                    None => self.after_size(size, b)?,
                },
                Chunk::AfterSize { size } => self.after_size(size, b)?,
                Chunk::Extension { size } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        self.extension_byte()?;
                        Chunk::Extension { size }
                    }
                    _ => return Err(FramingError("invalid byte in chunk extension")),
                },
                Chunk::SizeLf { size } => match b {
                    b'\n' if size == 0 => Chunk::TrailerStart,
                    b'\n' => Chunk::Data { left: size },
                    _ => return Err(FramingError("chunk size line not ended by CRLF")),
                },
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return Err(FramingError("chunk data not followed by CRLF")),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size { size: 0, digits: 0 },
                    _ => return Err(FramingError("chunk data not followed by CRLF")),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::EndLf,
                    b'\t' | b' ' => return Err(FramingError("folded trailer line")),
                    _ => {
                        self.name_len = 0;
                        self.trailer_name_byte(b)?
                    }
                },
                Chunk::TrailerName => match b {
                    b':' => self.trailer_name_end()?,
                    _ => self.trailer_name_byte(b)?,
                },
                Chunk::TrailerValue => match b {
                    b'\r' => Chunk::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        self.trailer_byte()?;
                        Chunk::TrailerValue
                    }
                    _ => return Err(FramingError("invalid byte in a trailer value")),
                },
                Chunk::TrailerLf => match b {
                    b'\n' => Chunk::TrailerStart,
                    _ => return Err(FramingError("trailer line not ended by CRLF")),
                },
                Chunk::EndLf => match b {
                    b'\n' => Chunk::Done,
                    _ => return Err(FramingError("chunked body not ended by CRLF")),
                },
            };
            i += 1;
        }
        Ok(Advance {
            used: i,
            done: self.chunk == Chunk::Done,
        })
    }

    fn after_size(&mut self, size: u64, b: u8) -> Result<Chunk, FramingError> {
        match b {
            b'\r' => Ok(Chunk::SizeLf { size }),
            b' ' | b'\t' => {
                self.extension_byte()?;
                Ok(Chunk::AfterSize { size })
            }
            b';' => {
                self.extension_byte()?;
                Ok(Chunk::Extension { size })
            }
            _ => Err(FramingError("invalid byte after chunk size")),
        }
    }

    fn extension_byte(&mut self) -> Result<(), FramingError> {
        self.extension_bytes += 1;
        if self.extension_bytes > MAX_EXTENSIONS {
            return Err(FramingError("chunk extensions too long"));
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), FramingError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(FramingError("trailers too large"));
        }
        Ok(())
    }

    fn trailer_name_byte(&mut self, b: u8) -> Result<Chunk, FramingError> {
        self.trailer_byte()?;
        if b == b'_' || !is_tchar(b) {
            return Err(FramingError("invalid trailer field name"));
        }
        if let Some(slot) = self.name.get_mut(self.name_len) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len += 1;
        Ok(Chunk::TrailerName)
    }

    /// The colon after a trailer's name.
    fn trailer_name_end(&mut self) -> Result<Chunk, FramingError> {
        self.trailer_byte()?;
        let name = &self.name[..self.name_len.min(NAME_KEPT)];
        if self.name_len <= NAME_KEPT && FORBIDDEN_TRAILERS.contains(&name) {
            return Err(FramingError("trailer field that frames or routes a message"));
        }
        Ok(Chunk::TrailerValue)
    }
}

/// A token character of a field name (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `parts` one after the other; the decoded data and the bytes used in all.
    fn run(mut f: Framing, parts: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), FramingError> {
        let (mut data, mut used, mut done) = (Vec::new(), 0, false);
        for p in parts {
            let a = f.advance(p, |r| data.extend_from_slice(&p[r]))?;
            used += a.used;
            done = a.done;
            if done {
                break;
            }
        }
        Ok((data, used, done))
    }

    #[test]
    fn a_chunked_body_is_found_in_any_split_and_what_follows_is_left() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        let (data, used, done) = run(Framing::chunked(), &[body]).unwrap();
        assert_eq!(
            (data.as_slice(), used, done),
            (&b"Wikipedia in\r\n\r\nchunks."[..], end, true)
        );
        let bytes: Vec<&[u8]> = body.iter().map(std::slice::from_ref).collect();
        let (data, used, done) = run(Framing::chunked(), &bytes).unwrap();
        assert_eq!((data.len(), used, done), (23, end, true), "byte by byte");
    }

    #[test]
    fn trailers_are_read_to_the_end() {
        let (_, used, done) = run(Framing::chunked(), &[b"1\r\na\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nrest"]).unwrap();
        assert_eq!((used, done), (25, true));
    }

    #[test]
    fn lenient_framing_is_refused() {
        for bad in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWiki\n0\r\n\r\n",
            b"4\r\nWikiX\r\n",
            b"g\r\n",
            b"\r\n",
            b"-1\r\n",
            b"0x4\r\n",
            b"1000000000000000\r\n",
            b"4;a\0b\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\n\r\r",
        ] {
            assert!(
                run(Framing::chunked(), &[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = format!("1;{}\r\n", "x".repeat(MAX_EXTENSIONS + 1));
        assert!(run(Framing::chunked(), &[long_ext.as_bytes()]).is_err());
    }

    #[test]
    fn extensions_are_bounded_per_body_not_per_chunk() {
        // A thousand one-byte chunks with 4,000-byte extensions: refused once the body's
        // extensions pass 16 KiB, long before megabytes could go upstream.
        let chunk = format!("1;{}\r\nx\r\n", "e".repeat(4000));
        let body = chunk.repeat(1000);
        let mut f = Framing::chunked();
        let err = f.advance(body.as_bytes(), |_| {}).unwrap_err();
        assert_eq!(err, FramingError("chunk extensions too long"));
        // Whitespace after the size counts too.
        let padded = format!("1{}\r\nx\r\n", " ".repeat(2000)).repeat(10);
        assert!(run(Framing::chunked(), &[padded.as_bytes()]).is_err());
        // Ordinary extensions on many chunks pass.
        let fine = format!("{}0\r\n\r\n", "1;a=b\r\nx\r\n".repeat(2000));
        let (data, _, done) = run(Framing::chunked(), &[fine.as_bytes()]).unwrap();
        assert_eq!((data.len(), done), (2000, true));
    }

    #[test]
    fn trailers_must_be_header_fields_that_neither_frame_nor_route() {
        for bad in [
            &b"0\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"0\r\nX Y: 1\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
            b"0\r\nContent-Length: 5\r\n\r\n",
            b"0\r\ntransfer-encoding: chunked\r\n\r\n",
            b"0\r\nHOST: evil\r\n\r\n",
            b"0\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(
                run(Framing::chunked(), &[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            let bytes: Vec<&[u8]> = bad.iter().map(std::slice::from_ref).collect();
            assert!(run(Framing::chunked(), &bytes).is_err(), "byte by byte");
        }
        let fine = b"0\r\nX-Checksum: abc\r\nServer-Timing: db;dur=53\r\nContent-Lengthy: 1\r\n\r\n";
        let (_, used, done) = run(Framing::chunked(), &[fine]).unwrap();
        assert_eq!((used, done), (fine.len(), true));
        let huge = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
        assert!(run(Framing::chunked(), &[huge.as_bytes()]).is_err());
    }

    #[test]
    fn a_length_body_takes_exactly_its_bytes() {
        let (data, used, done) = run(Framing::length(5), &[b"abc", b"defgh"]).unwrap();
        assert_eq!((data.as_slice(), used, done), (&b"abcde"[..], 5, true));
        assert!(Framing::length(0).is_done());
    }

    #[test]
    fn a_close_delimited_body_never_ends_by_itself() {
        let (data, used, done) = run(Framing::Close, &[b"abc", b"de"]).unwrap();
        assert_eq!((data.len(), used, done), (5, 5, false));
    }
}

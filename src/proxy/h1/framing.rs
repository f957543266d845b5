//! Where an HTTP/1 message body ends: by length, by chunked framing, or at the close of
//! the connection. The engine streams body bytes through unchanged and uses this to know
//! how many of the bytes it holds belong to the body (the rest is the next pipelined
//! request, or bytes a server should not have sent).
//!
//! The chunked parser is strict (RFC 9112 §7.1): hex sizes of at most 15 digits, CRLF
//! line ends (a bare LF is an error), extensions of visible characters only, CRLF after
//! each chunk's data, trailers as header-like lines, all bounded. A lenient parser on one
//! side of a proxy and a strict one on the other is how requests are smuggled.

use std::ops::Range;

/// Longest chunk extension, and all trailer lines together.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

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
    /// In an extension; bytes of it so far.
    Extension {
        size: u64,
        len: usize,
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
    TrailerLine,
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
    trailer_bytes: usize,
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
                trailer_bytes: 0,
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
                    None => after_size(size, b)?,
                },
                Chunk::AfterSize { size } => after_size(size, b)?,
                Chunk::Extension { size, len } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    _ if len >= MAX_EXTENSION => return Err(FramingError("chunk extension too long")),
                    b'\t' | b' '..=b'~' | 0x80..=0xff => Chunk::Extension { size, len: len + 1 },
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
                    _ => self.trailer_byte(b)?,
                },
                Chunk::TrailerLine => match b {
                    b'\r' => Chunk::TrailerLf,
                    _ => self.trailer_byte(b)?,
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

    fn trailer_byte(&mut self, b: u8) -> Result<Chunk, FramingError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(FramingError("trailers too large"));
        }
        match b {
            b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(Chunk::TrailerLine),
            _ => Err(FramingError("invalid byte in a trailer")),
        }
    }
}

fn after_size(size: u64, b: u8) -> Result<Chunk, FramingError> {
    match b {
        b'\r' => Ok(Chunk::SizeLf { size }),
        b' ' | b'\t' => Ok(Chunk::AfterSize { size }),
        b';' => Ok(Chunk::Extension { size, len: 0 }),
        _ => Err(FramingError("invalid byte after chunk size")),
    }
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
        let long_ext = format!("1;{}\r\n", "x".repeat(MAX_EXTENSION + 1));
        assert!(run(Framing::chunked(), &[long_ext.as_bytes()]).is_err());
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

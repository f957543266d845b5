//! The client's side of a WebSocket connection, read frame by frame as the bytes pass to
//! tungstenite: which data messages complete, whether text or binary, and the first bytes
//! of each text message (enough to tell a Socket.IO binary packet's announcement). It keeps
//! no payload beyond those bytes and changes nothing; tungstenite, behind it, still checks
//! every frame itself (sizes, masking, UTF-8) and closes the connection on a bad one.
//!
//! Headers are parsed by tungstenite's own `FrameHeader::parse`, so both read the same
//! frame boundaries.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// How many first bytes of a text message are kept: an Engine.IO message type, a
/// Socket.IO packet type, an attachment count and its `-`, with room to spare.
pub const HEAD: usize = 32;

/// The longest frame header (2 bytes, an 8-byte length, a 4-byte mask).
const MAX_HEADER: usize = 14;

/// A data message the client finished sending.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Its first bytes (up to `HEAD`).
    Text(&'a [u8]),
    Binary,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed WebSocket frame from the client: {0}")]
pub struct FrameError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// Reads the frames of one client-to-server byte stream.
#[derive(Debug, Default)]
pub struct ClientFrames {
    /// A header not yet complete.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// A header was read: its payload comes (or came, when empty) next.
    in_frame: bool,
    /// Payload bytes of the current frame not yet seen (0: a header comes next).
    remaining: u64,
    /// Payload bytes of the current frame already seen (for the mask's phase).
    seen: u64,
    mask: Option<[u8; 4]>,
    /// Whether the current frame carries message data (not a control frame).
    data: bool,
    /// Whether the current frame ends its message.
    last: bool,
    /// The data message in progress, if any.
    message: Option<Kind>,
    head: [u8; HEAD],
    head_len: usize,
}

impl ClientFrames {
    /// Read `bytes` (what the client sent next), calling `on_message` for each data
    /// message that completes in them.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(Message<'_>)) -> Result<(), FrameError> {
        while !bytes.is_empty() {
            if !self.in_frame {
                let used = self.read_header(bytes)?;
                bytes = &bytes[used..];
                if !self.in_frame {
                    return Ok(()); // the header needs more bytes
                }
            }
            let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(bytes.len());
            self.keep_head(&bytes[..n]);
            self.remaining -= n as u64;
            self.seen += n as u64;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.end_frame(&mut on_message);
            }
        }
        Ok(())
    }

    /// Take header bytes from `bytes`; how many were used. Once complete, the frame's
    /// payload begins (`in_frame`).
    fn read_header(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let had = self.header_len;
        let take = (MAX_HEADER - had).min(bytes.len());
        self.header[had..had + take].copy_from_slice(&bytes[..take]);
        let mut cursor = Cursor::new(&self.header[..had + take]);
        match FrameHeader::parse(&mut cursor) {
            Ok(None) => {
                self.header_len = had + take;
                Ok(take)
            }
            Ok(Some((header, length))) => {
                let used = cursor.position() as usize - had;
                self.start_frame(&header, length)?;
                Ok(used)
            }
            Err(e) => Err(FrameError(e.to_string())),
        }
    }

    fn start_frame(&mut self, header: &FrameHeader, length: u64) -> Result<(), FrameError> {
        self.in_frame = true;
        self.header_len = 0;
        self.remaining = length;
        self.seen = 0;
        self.mask = header.mask;
        self.last = header.is_final;
        self.data = true;
        match header.opcode {
            OpCode::Control(_) => self.data = false,
            OpCode::Data(Data::Text) => self.begin(Kind::Text),
            OpCode::Data(Data::Binary) => self.begin(Kind::Binary),
            OpCode::Data(Data::Continue) if self.message.is_some() => {}
            OpCode::Data(Data::Continue) => return Err(FrameError("continuation without a message".into())),
            OpCode::Data(Data::Reserved(op)) => return Err(FrameError(format!("reserved opcode {op}"))),
        }
        Ok(())
    }

    fn begin(&mut self, kind: Kind) {
        self.message = Some(kind);
        self.head_len = 0;
    }

    /// Keep the first `HEAD` bytes of a text message, unmasked.
    fn keep_head(&mut self, payload: &[u8]) {
        if !self.data || self.message != Some(Kind::Text) || self.head_len == HEAD {
            return;
        }
        let n = (HEAD - self.head_len).min(payload.len());
        for (i, byte) in payload[..n].iter().enumerate() {
            let phase = ((self.seen + i as u64) % 4) as usize;
            self.head[self.head_len + i] = byte ^ self.mask.map_or(0, |m| m[phase]);
        }
        self.head_len += n;
    }

    fn end_frame(&mut self, on_message: &mut impl FnMut(Message<'_>)) {
        self.in_frame = false;
        if !self.data || !self.last {
            return;
        }
        match self.message.take() {
            Some(Kind::Text) => on_message(Message::Text(&self.head[..self.head_len])),
            Some(Kind::Binary) => on_message(Message::Binary),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as clients must send them.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(Vec<u8>),
        Binary,
    }

    /// Feed `stream` in pieces of `step` bytes; what completed.
    fn read(stream: &[u8], step: usize) -> Vec<Seen> {
        let mut frames = ClientFrames::default();
        let mut seen = Vec::new();
        for piece in stream.chunks(step) {
            frames
                .feed(piece, |m| {
                    seen.push(match m {
                        Message::Text(head) => Seen::Text(head.to_vec()),
                        Message::Binary => Seen::Binary,
                    })
                })
                .unwrap();
        }
        seen
    }

    #[test]
    fn messages_are_found_however_the_bytes_are_cut() {
        let big = vec![7u8; 70_000];
        let mut stream = frame(0x1, true, b"451-[\"say\",{\"_placeholder\":true,\"num\":0}]");
        stream.extend(frame(0x2, true, &big));
        stream.extend(frame(0x9, true, b"ping")); // control frames are no message
        stream.extend(frame(0x1, true, b""));
        stream.extend(frame(0x2, false, b"ab")); // a fragmented binary message
        stream.extend(frame(0xA, true, b"")); // a control frame between its fragments
        stream.extend(frame(0x0, true, b"cd"));
        stream.extend(frame(0x1, false, b"42[\"sa")); // a fragmented text message
        stream.extend(frame(0x0, true, b"y\"]"));
        let want = vec![
            Seen::Text(b"451-[\"say\",{\"_placeholder\":true,".to_vec()),
            Seen::Binary,
            Seen::Text(Vec::new()),
            Seen::Binary,
            Seen::Text(b"42[\"say\"]".to_vec()),
        ];
        for step in [1, 2, 3, 7, 13, 500, stream.len()] {
            assert_eq!(read(&stream, step), want, "in pieces of {step}");
        }
    }

    #[test]
    fn a_bad_frame_is_an_error() {
        let mut frames = ClientFrames::default();
        assert!(frames.feed(&frame(0x3, true, b"x"), |_| {}).is_err(), "reserved opcode");
        let mut frames = ClientFrames::default();
        assert!(
            frames.feed(&frame(0x0, true, b"x"), |_| {}).is_err(),
            "continuation first"
        );
    }
}

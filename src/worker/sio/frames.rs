//! WebSocket frames (RFC 6455) on the server side of one connection: [`Frames`] turns the
//! bytes a client sends, however they are cut, into whole messages, and [`header`] writes
//! the head of a frame for the client. It keeps only the message being received (nothing
//! between messages, so an idle connection costs a few dozen bytes here) and refuses what
//! a server must refuse: unmasked or reserved frames, bad fragmentation, control frames
//! over 125 bytes, text that is not UTF-8, and messages over the size limit, which are
//! refused from their frame header on, before their payload is read.

use bytes::Bytes;

/// Close codes the server sends (RFC 6455 §7.4.1).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;
const OP_CONTINUE: u8 = 0x0;

/// A whole message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    /// The client closes, with its close code if it sent one.
    Close(Option<u16>),
}

/// Why the connection must be closed, as a close code for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("WebSocket close {0}")]
pub struct Refused(pub u16);

/// The receiving side of one connection.
#[derive(Debug, Default)]
pub struct Frames {
    /// A frame header still incomplete.
    head: [u8; 14],
    head_len: u8,
    /// The frame being read: its payload bytes still to come (set once its header is in).
    in_frame: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes of the current frame seen so far (for the mask's phase).
    seen: u64,
    opcode: u8,
    fin: bool,
    /// The data message being received (`OP_TEXT` or `OP_BINARY`), 0 between messages.
    message: u8,
    data: Vec<u8>,
    /// The payload of the control frame being read.
    control: Vec<u8>,
    /// The client sent its close frame: nothing after it counts.
    closed: bool,
}

impl Frames {
    /// Read `bytes` (what the client sent next) and append every message they complete to
    /// `out`. After a `Close` the rest is ignored. `max` bounds a data message's size.
    pub fn feed(&mut self, mut bytes: &[u8], max: usize, out: &mut Vec<Message>) -> Result<(), Refused> {
        loop {
            if self.closed {
                return Ok(());
            }
            if !self.in_frame {
                let used = self.read_header(bytes, max)?;
                bytes = &bytes[used..];
                if !self.in_frame {
                    return Ok(()); // the header needs more bytes
                }
            }
            let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(bytes.len());
            let (payload, rest) = bytes.split_at(n);
            let sink = if self.opcode & 0x8 != 0 {
                &mut self.control
            } else {
                &mut self.data
            };
            let start = sink.len();
            sink.extend_from_slice(payload);
            for (i, b) in sink[start..].iter_mut().enumerate() {
                *b ^= self.mask[((self.seen + i as u64) % 4) as usize];
            }
            self.seen += n as u64;
            self.remaining -= n as u64;
            bytes = rest;
            if self.remaining > 0 {
                return Ok(());
            }
            self.in_frame = false;
            if let Some(message) = self.finish_frame()? {
                self.closed = matches!(message, Message::Close(_));
                out.push(message);
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Take header bytes from `bytes`; how many were used. Sets `in_frame` once complete.
    fn read_header(&mut self, bytes: &[u8], max: usize) -> Result<usize, Refused> {
        let had = usize::from(self.head_len);
        let take = (self.head.len() - had).min(bytes.len());
        self.head[had..had + take].copy_from_slice(&bytes[..take]);
        let have = had + take;
        if have < 2 {
            self.head_len = have as u8;
            return Ok(take);
        }
        let (b0, b1) = (self.head[0], self.head[1]);
        let extra = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + extra + 4;
        if have < len {
            self.head_len = have as u8;
            return Ok(take);
        }
        let length = match extra {
            0 => u64::from(b1 & 0x7f),
            2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            _ => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0xff; 8])),
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
            return Err(Refused(close::PROTOCOL)); // extension bits, or an unmasked client frame
        }
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG if !fin || length > 125 => return Err(Refused(close::PROTOCOL)),
            OP_CLOSE | OP_PING | OP_PONG => {}
            OP_CONTINUE if self.message == 0 => return Err(Refused(close::PROTOCOL)),
            OP_TEXT | OP_BINARY if self.message != 0 => return Err(Refused(close::PROTOCOL)),
            OP_CONTINUE | OP_TEXT | OP_BINARY => {
                if length.saturating_add(self.data.len() as u64) > max as u64 {
                    return Err(Refused(close::TOO_BIG));
                }
                if opcode != OP_CONTINUE {
                    self.message = opcode;
                }
                self.data.reserve(length as usize);
            }
            _ => return Err(Refused(close::PROTOCOL)),
        }
        self.mask.copy_from_slice(&self.head[len - 4..len]);
        self.head_len = 0;
        self.in_frame = true;
        self.remaining = length;
        self.seen = 0;
        self.opcode = opcode;
        self.fin = fin;
        Ok(len - had)
    }

    /// The message a frame just read completes, if any.
    fn finish_frame(&mut self) -> Result<Option<Message>, Refused> {
        let control = std::mem::take(&mut self.control);
        Ok(match self.opcode {
            OP_PING => Some(Message::Ping(Bytes::from(control))),
            OP_PONG => None,
            OP_CLOSE => Some(Message::Close(match control[..] {
                [a, b, ..] => Some(u16::from_be_bytes([a, b])),
                _ => None,
            })),
            _ if !self.fin => None,
            _ => {
                let data = std::mem::take(&mut self.data);
                let kind = std::mem::take(&mut self.message);
                Some(if kind == OP_TEXT {
                    Message::Text(String::from_utf8(data).map_err(|_| Refused(close::INVALID_DATA))?)
                } else {
                    Message::Binary(Bytes::from(data))
                })
            }
        })
    }
}

/// The head of an unmasked, final server frame with `len` payload bytes: its bytes and how
/// many of them there are.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode;
    let n = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
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

    fn read_all(chunks: &[&[u8]], max: usize) -> Result<Vec<Message>, Refused> {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        for chunk in chunks {
            frames.feed(chunk, max, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn messages_come_whole_however_the_bytes_are_cut() {
        let long = "x".repeat(70_000);
        let mut stream = frame(0x81, b"40");
        stream.extend(frame(0x01, b"42[\"sa")); // a fragmented text message…
        stream.extend(frame(0x89, b"hi")); // …with a ping between its fragments
        stream.extend(frame(0x80, b"y\"]"));
        stream.extend(frame(0x82, &[1, 2, 3]));
        stream.extend(frame(0x81, b"")); // an empty message
        stream.extend(frame(0x81, long.as_bytes()));
        stream.extend(frame(0x8a, b"")); // a pong: nothing to report
        stream.extend(frame(0x88, &1000u16.to_be_bytes()));
        stream.extend(frame(0x81, b"after close: ignored"));
        let expected = vec![
            Message::Text("40".into()),
            Message::Ping(Bytes::from_static(b"hi")),
            Message::Text("42[\"say\"]".into()),
            Message::Binary(Bytes::from_static(&[1, 2, 3])),
            Message::Text(String::new()),
            Message::Text(long),
            Message::Close(Some(1000)),
        ];
        assert_eq!(read_all(&[&stream], 1 << 20).unwrap(), expected);
        for cut in [1, 2, 3, 7, 13, 100, 4096] {
            let chunks: Vec<&[u8]> = stream.chunks(cut).collect();
            assert_eq!(read_all(&chunks, 1 << 20).unwrap(), expected, "cut every {cut} bytes");
        }
    }

    #[test]
    fn what_a_server_must_refuse_is_refused() {
        let refused = |bytes: Vec<u8>, max: usize| read_all(&[&bytes], max).unwrap_err().0;
        let mut unmasked = frame(0x81, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(refused(unmasked, 100), close::PROTOCOL);
        assert_eq!(
            refused(frame(0xc1, b"x"), 100),
            close::PROTOCOL,
            "RSV1 without an extension"
        );
        assert_eq!(refused(frame(0x83, b"x"), 100), close::PROTOCOL, "reserved opcode");
        assert_eq!(
            refused(frame(0x80, b"x"), 100),
            close::PROTOCOL,
            "continuation of nothing"
        );
        assert_eq!(refused(frame(0x09, b"x"), 100), close::PROTOCOL, "fragmented ping");
        assert_eq!(refused(frame(0x89, &[0; 126]), 1000), close::PROTOCOL, "ping over 125");
        let mut two_starts = frame(0x01, b"a");
        two_starts.extend(frame(0x81, b"b"));
        assert_eq!(refused(two_starts, 100), close::PROTOCOL);
        assert_eq!(refused(frame(0x81, &[0xff, 0xfe]), 100), close::INVALID_DATA);
        assert_eq!(refused(frame(0x82, &[0; 101]), 100), close::TOO_BIG);
        let mut growing = frame(0x01, &[b'a'; 60]);
        growing.extend(frame(0x80, &[b'a'; 60]));
        assert_eq!(refused(growing, 100), close::TOO_BIG, "fragments add up");
        // A 10 MB frame is refused from its header alone.
        let mut head = frame(0x81, &[0; 70_000])[..14].to_vec();
        head[2..10].copy_from_slice(&(10u64 << 20).to_be_bytes());
        head[1] = 0x80 | 127;
        assert_eq!(refused(head[..14].to_vec(), 1 << 20), close::TOO_BIG);
        assert_eq!(
            read_all(&[&frame(0x82, &[0; 100])], 100).unwrap().len(),
            1,
            "the limit itself is fine"
        );
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(header(OP_TEXT, 5), ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(header(OP_BINARY, 300), ([0x82, 126, 1, 44, 0, 0, 0, 0, 0, 0], 4));
        let (h, n) = header(OP_TEXT, 70_000);
        assert_eq!((h[1], n, &h[2..10]), (127, 10, &70_000u64.to_be_bytes()[..]));
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// A client frame with this first byte, mask and payload (16-bit length from 126 on).
        fn masked(first: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
            let mut out = vec![first];
            if payload.len() < 126 {
                out.push(0x80 | payload.len() as u8);
            } else {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            out
        }

        fn feed_cut(stream: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Message>, Refused> {
            let mut frames = Frames::default();
            let mut out = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                frames.feed(&stream[at..at + n], max, &mut out)?;
                at += n;
                i += 1;
            }
            Ok(out)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_bytes_however_cut_never_panic_nor_pass_the_limit(
                bytes in vec(any::<u8>(), 0..700),
                cuts in vec(1usize..80, 1..12),
            ) {
                if let Ok(messages) = feed_cut(&bytes, &cuts, 100) {
                    for m in messages {
                        match m {
                            Message::Text(t) => prop_assert!(t.len() <= 100),
                            Message::Binary(b) => prop_assert!(b.len() <= 100),
                            Message::Ping(p) => prop_assert!(p.len() <= 125),
                            Message::Close(_) => {}
                        }
                    }
                }
            }

            #[test]
            fn fragmented_masked_messages_with_pings_between_come_back_whole(
                messages in vec((any::<bool>(), vec(any::<u8>(), 0..300), 1usize..4, any::<bool>()), 1..8),
                mask in any::<[u8; 4]>(),
                cuts in vec(1usize..200, 1..8),
            ) {
                let mut stream = Vec::new();
                let mut expected = Vec::new();
                for (text, payload, pieces, ping) in messages {
                    let payload = if text {
                        String::from_utf8_lossy(&payload).into_owned().into_bytes()
                    } else {
                        payload
                    };
                    let step = payload.len().div_ceil(pieces).max(1);
                    let chunks: Vec<&[u8]> = if payload.is_empty() { vec![&[][..]] } else { payload.chunks(step).collect() };
                    let whole = if text {
                        Message::Text(String::from_utf8(payload.clone()).unwrap())
                    } else {
                        Message::Binary(Bytes::from(payload.clone()))
                    };
                    let mut whole = Some(whole);
                    for (i, chunk) in chunks.iter().enumerate() {
                        let op = if i > 0 { OP_CONTINUE } else if text { OP_TEXT } else { OP_BINARY };
                        let last = i + 1 == chunks.len();
                        stream.extend(masked(if last { 0x80 | op } else { op }, mask, chunk));
                        if last {
                            expected.extend(whole.take());
                        }
                        if ping && i == 0 {
                            stream.extend(masked(0x80 | OP_PING, mask, b"p"));
                            expected.push(Message::Ping(Bytes::from_static(b"p")));
                        }
                    }
                }
                prop_assert_eq!(feed_cut(&stream, &cuts, 1000).unwrap(), expected);
            }
        }
    }
}

//! Where a WebSocket stream is, frame by frame (RFC 6455 §5.2): the relay feeds it the
//! server's bytes so that a close frame of edgepin's own lands between two frames, never
//! inside one. Headers only; payloads are counted, not read.

/// Where the server's stream is, frame by frame (RFC 6455 §5.2), so a close frame of
/// ours lands between frames.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Frames {
    /// Header bytes seen of the current frame (0: at a boundary).
    header: [u8; 14],
    have: u8,
    /// Payload bytes left in the current frame.
    left: u64,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = self.left.min(data.len() as u64);
                self.left -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.have as usize] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some((len, header_len)) = self.header_complete()
                && self.have as usize == header_len
            {
                self.left = len;
                self.have = 0;
            }
        }
    }

    /// (payload length, header length) once enough header bytes are in.
    fn header_complete(&self) -> Option<(u64, usize)> {
        let h = &self.header[..self.have as usize];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let mask = if masked { 4 } else { 0 };
        match h[1] & 0x7f {
            126 if h.len() >= 4 => Some((u64::from(u16::from_be_bytes([h[2], h[3]])), 4 + mask)),
            127 if h.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                Some((u64::from_be_bytes(b), 10 + mask))
            }
            126 | 127 => None,
            n => Some((u64::from(n), 2 + mask)),
        }
    }
}

/// A binary frame with `payload` (unmasked), for tests.
#[cfg(test)]
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_tracked_in_any_split() {
        let mut stream = Vec::new();
        for n in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(&vec![7u8; n]));
        }
        let mut whole = Frames::default();
        whole.feed(&stream);
        assert!(whole.at_boundary());
        let mut bytes = Frames::default();
        for (i, b) in stream.iter().enumerate() {
            bytes.feed(std::slice::from_ref(b));
            if i == 3 {
                assert!(!bytes.at_boundary());
            }
        }
        assert!(bytes.at_boundary());
        let mut half = Frames::default();
        half.feed(&stream[..stream.len() - 1]);
        assert!(!half.at_boundary());
    }
}

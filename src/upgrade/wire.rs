//! The upgrade socket's protocol: length-prefixed JSON messages over a Unix stream
//! socket, with the listening sockets attached to one of them (SCM_RIGHTS).
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON ([`Message`]).
//! Descriptors travel as ancillary data of the first bytes of the frame they belong to;
//! the receiver reads with `recvmsg` every time and keeps whatever descriptors arrive
//! ([`Link::take_fds`]). Everything here is blocking I/O with timeouts: the upgrade's
//! control messages are few, and each conversation runs on a thread of its own. This
//! module knows nothing about what the messages mean.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use super::carried::Carried;

/// The largest frame accepted (a sid table of a few million sessions fits).
const MAX_FRAME: usize = 512 << 20;
/// Descriptors one frame may carry (https, http, stats, the upgrade socket, and room).
pub const MAX_FDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the other side closed the connection")]
    Closed,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unreadable message: {0}")]
    Json(#[from] serde_json::Error),
}

/// A listening socket handed over, in the order of the descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handed {
    /// `https`, `http`, `stats` or `upgrade`.
    pub role: String,
    /// The address it listens on (TCP), or its path (the upgrade socket).
    pub address: String,
}

/// What a draining process says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub pid: u32,
    /// WebSocket tunnels still open.
    pub tunnels: u64,
    /// Other requests in flight.
    pub requests: u64,
    /// When it stops waiting and starts closing what is left (Unix seconds).
    pub hard_stop_unix: u64,
    /// The window over which the remaining tunnels are closed, seconds.
    pub close_spread_secs: u64,
    /// Whether it is closing its remaining tunnels now.
    pub closing: bool,
}

/// A session a draining process learned (`server`) or that ended (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidChange {
    pub sid: String,
    pub server: Option<String>,
}

/// Every message of the upgrade socket (see `upgrade` for the conversation).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// `edgepin upgrade` → the serving process: start `binary` and hand over to it.
    Upgrade {
        binary: PathBuf,
        timeout_ms: u64,
    },
    /// The serving process → `edgepin upgrade`: done; the old one drains.
    Upgraded {
        old_pid: u32,
        new_pid: u32,
        took_ms: u64,
        tunnels: u64,
        hard_stop_unix: u64,
    },
    /// The serving process → `edgepin upgrade`: not done; it goes on serving.
    Refused {
        reason: String,
    },
    /// The new process → the old one: it was started for this upgrade (`token`).
    Takeover {
        token: String,
        pid: u32,
    },
    /// Old → new, with the listening sockets attached in this order.
    Listeners {
        sockets: Vec<Handed>,
    },
    /// Old → new: what the old one knows.
    State(Box<Carried>),
    /// New → old: ready and accepting; the old one may stop.
    Ready,
    /// New → old: it cannot start, and exits.
    Failed {
        reason: String,
    },
    /// Old → new: it stopped accepting; the new one serves alone.
    Committed,
    /// A draining process → the serving one, on a connection of its own (its first link
    /// was closed by a later upgrade).
    Draining {
        pid: u32,
    },
    /// A draining process → the serving one: sessions it learned or that ended.
    Sids {
        changes: Vec<SidChange>,
    },
    Status(DrainStatus),
    /// A draining process → the serving one: it is about to exit.
    Gone {
        pid: u32,
    },
}

/// One end of an upgrade socket connection.
#[derive(Debug)]
pub struct Link {
    stream: UnixStream,
    /// Bytes read past the last frame returned.
    rbuf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Link {
    pub fn new(stream: UnixStream) -> Link {
        Link {
            stream,
            rbuf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Connect to the upgrade socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Link> {
        UnixStream::connect(path).map(Link::new)
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// The connecting process's credentials.
    pub fn peer(&self) -> std::io::Result<rustix::net::UCred> {
        Ok(rustix::net::sockopt::socket_peercred(&self.stream)?)
    }

    pub fn send(&mut self, message: &Message) -> Result<(), WireError> {
        self.send_with(message, &[])
    }

    /// Send `message` with `fds` attached.
    pub fn send_with(&mut self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
        let frame = encode(message)?;
        let mut sent = 0;
        if !fds.is_empty() {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if fds.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(std::io::Error::other("too many descriptors for one message").into());
            }
            sent = rustix::net::sendmsg(&self.stream, &[IoSlice::new(&frame)], &mut control, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)?;
        }
        (&self.stream).write_all(&frame[sent..])?;
        Ok(())
    }

    /// The next message, waiting at most `timeout` (`None`: as long as it takes).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Message, WireError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(frame) = self.frame()? {
                return Ok(serde_json::from_slice(&frame)?);
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(WireError::TimedOut(timeout.unwrap_or_default())),
                },
                None => None,
            };
            self.stream.set_read_timeout(wait)?;
            match self.read_some() {
                Ok(0) => return Err(WireError::Closed),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The descriptors received so far (in order), taken.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }

    /// A complete frame from the buffer, if there is one.
    fn frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(len) = self.rbuf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b) as usize) else {
            return Ok(None);
        };
        if len > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        if self.rbuf.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.rbuf[4..4 + len].to_vec();
        self.rbuf.drain(..4 + len);
        Ok(Some(frame))
    }

    /// One `recvmsg`: bytes into the buffer, descriptors into `fds`.
    fn read_some(&mut self) -> std::io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        self.rbuf.extend_from_slice(&chunk[..got.bytes]);
        Ok(got.bytes)
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, message)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Read everything `stream` still sends (to drain a connection before closing it).
pub fn discard(mut stream: &UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_cross_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets = vec![
            Handed {
                role: "https".into(),
                address: l1.local_addr().unwrap().to_string(),
            },
            Handed {
                role: "http".into(),
                address: l2.local_addr().unwrap().to_string(),
            },
        ];
        a.send_with(
            &Message::Listeners {
                sockets: sockets.clone(),
            },
            &[l1.as_fd(), l2.as_fd()],
        )
        .unwrap();
        a.send(&Message::Ready).unwrap();
        match b.recv(Some(Duration::from_secs(5))).unwrap() {
            Message::Listeners { sockets: got } => assert_eq!(got, sockets),
            other => panic!("{other:?}"),
        }
        assert!(matches!(b.recv(Some(Duration::from_secs(5))).unwrap(), Message::Ready));
        let fds = b.take_fds();
        assert_eq!(fds.len(), 2);
        let got: Vec<TcpListener> = fds.into_iter().map(TcpListener::from).collect();
        assert_eq!(
            got[0].local_addr().unwrap(),
            l1.local_addr().unwrap(),
            "the same socket"
        );
        assert_eq!(got[1].local_addr().unwrap(), l2.local_addr().unwrap());
        // A connection to the address is accepted through the received descriptor.
        drop(l1);
        let _client = std::net::TcpStream::connect(got[0].local_addr().unwrap()).unwrap();
        assert!(got[0].accept().is_ok());
    }

    #[test]
    fn a_large_message_arrives_whole_and_silence_times_out() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Link::new(a), Link::new(b));
        let reason = "x".repeat(3 << 20);
        let writer = std::thread::spawn(move || {
            a.send(&Message::Failed { reason }).unwrap();
            a
        });
        match b.recv(Some(Duration::from_secs(10))).unwrap() {
            Message::Failed { reason } => assert_eq!(reason.len(), 3 << 20),
            other => panic!("{other:?}"),
        }
        let a = writer.join().unwrap();
        let started = Instant::now();
        assert!(matches!(
            b.recv(Some(Duration::from_millis(100))),
            Err(WireError::TimedOut(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(a);
        assert!(matches!(b.recv(Some(Duration::from_secs(5))), Err(WireError::Closed)));
    }

    #[test]
    fn every_message_encodes_and_decodes() {
        let status = DrainStatus {
            pid: 1,
            tunnels: 2,
            requests: 3,
            hard_stop_unix: 4,
            close_spread_secs: 5,
            closing: true,
        };
        let all = vec![
            Message::Upgrade {
                binary: "/usr/bin/edgepin".into(),
                timeout_ms: 1,
            },
            Message::Upgraded {
                old_pid: 1,
                new_pid: 2,
                took_ms: 3,
                tunnels: 4,
                hard_stop_unix: 5,
            },
            Message::Refused { reason: "r".into() },
            Message::Takeover {
                token: "t".into(),
                pid: 1,
            },
            Message::Listeners { sockets: vec![] },
            Message::State(Box::default()),
            Message::Ready,
            Message::Failed { reason: "f".into() },
            Message::Committed,
            Message::Draining { pid: 1 },
            Message::Sids {
                changes: vec![
                    SidChange {
                        sid: "a".into(),
                        server: Some("w1".into()),
                    },
                    SidChange {
                        sid: "b".into(),
                        server: None,
                    },
                ],
            },
            Message::Status(status),
            Message::Gone { pid: 1 },
        ];
        for m in all {
            let frame = encode(&m).unwrap_or_else(|e| panic!("{m:?}: {e}"));
            let back: Message = serde_json::from_slice(&frame[4..]).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
    }

    #[test]
    fn an_oversized_length_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut b = Link::new(b);
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(
            b.recv(Some(Duration::from_secs(5))),
            Err(WireError::TooLarge(_))
        ));
    }
}

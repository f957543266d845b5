//! One client: its Engine.IO session and the Socket.IO socket it opens on `/` (this worker
//! serves no other namespace), with what is queued for it, its transport, the rooms it
//! joined and the binary attachments it still owes. What moves the bytes (`ws`,
//! `polling`) and what decides (`receive`, the `Io`) share it through a lock held for a few
//! field updates at a time, never across an await.
//!
//! Kept small on purpose: an idle client costs this struct and little else (no channel,
//! no buffer, no task of its own on WebSocket beyond its connection's).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use socketioxide_core::Sid;
use socketioxide_core::adapter::Room;

use super::eio::Outgoing;

/// Most packets queued for one client; beyond that it is too slow to keep and is closed.
pub const MAX_QUEUED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it (Engine.IO close, WebSocket close, or Socket.IO disconnect).
    ByClient,
    /// The connection failed or ended without a close.
    TransportError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// No Socket.IO CONNECT within the connect timeout.
    ConnectTimeout,
    /// The client sent something the protocol does not allow.
    ProtocolError,
    /// A message or the attachments of one packet over the size limit.
    TooBig,
    /// Binary attachments announced and not sent in time.
    AttachmentsOverdue,
    /// More than `MAX_QUEUED` packets waiting for the client.
    TooSlow,
    /// Disconnected by a server (this one or another, through Redis).
    ByServer,
    /// This worker is stopping: the client reconnects elsewhere.
    Shutdown,
}

/// A binary event or ack waiting for its attachments.
#[derive(Debug)]
pub struct Partial {
    pub kind: PartialKind,
    pub expected: usize,
    pub received: VecDeque<Bytes>,
    pub bytes: usize,
    /// Tells the deadline timer whether this is still the packet it was set for.
    pub generation: u64,
}

#[derive(Debug)]
pub enum PartialKind {
    Event {
        args: Vec<serde_json::Value>,
        ack: Option<i64>,
    },
    Ack {
        id: i64,
        text: String,
    },
}

#[derive(Debug)]
pub struct State {
    pub outbox: VecDeque<Outgoing>,
    pub transport: Transport,
    /// A WebSocket answered the upgrade probe; the upgrade completes with `5`.
    pub upgrading: bool,
    /// Connected to `/` (CONNECT answered), or on the way (the hooks prepare it).
    pub connected: bool,
    pub connecting: bool,
    pub closed: Option<Closed>,
    /// A ping was sent and its pong has not come.
    pub awaiting_pong: bool,
    /// Rooms joined (not the socket's own).
    pub rooms: Vec<Room>,
    pub partial: Option<Box<Partial>>,
    /// A long-poll GET, a POST in progress (each at most one at a time).
    pub polling_get: bool,
    pub polling_post: bool,
}

pub struct Session {
    /// The Engine.IO session id (whoever knows it can poll as this client: never shown to
    /// other clients).
    pub sid: Sid,
    /// The Socket.IO id of the socket on `/`, and the name of its own room.
    pub id: Sid,
    state: Mutex<State>,
    /// Wakes whoever sends to the client (the WebSocket task or the long-poll GET).
    pub waker: AtomicWaker,
}

impl Session {
    pub fn new(transport: Transport) -> Session {
        Session {
            sid: Sid::new(),
            id: Sid::new(),
            state: Mutex::new(State {
                outbox: VecDeque::new(),
                transport,
                upgrading: false,
                connected: false,
                connecting: false,
                closed: None,
                awaiting_pong: false,
                rooms: Vec::new(),
                partial: None,
                polling_get: false,
                polling_post: false,
            }),
            waker: AtomicWaker::new(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `packet` for the client. False if the session is over, or just ended because
    /// the client stopped taking its packets (`Closed::TooSlow`: the caller closes it).
    pub fn push(&self, packet: Outgoing) -> Result<(), Closed> {
        {
            let mut state = self.state();
            if let Some(closed) = state.closed {
                return Err(closed);
            }
            if state.outbox.len() >= MAX_QUEUED {
                return Err(Closed::TooSlow);
            }
            state.outbox.push_back(packet);
        }
        self.waker.wake();
        Ok(())
    }

    /// Queue a text packet and its binary attachments together.
    pub fn push_with(&self, text: Bytes, attachments: Option<&VecDeque<Bytes>>) -> Result<(), Closed> {
        {
            let mut state = self.state();
            if let Some(closed) = state.closed {
                return Err(closed);
            }
            let n = 1 + attachments.map_or(0, VecDeque::len);
            if state.outbox.len() + n > MAX_QUEUED {
                return Err(Closed::TooSlow);
            }
            state.outbox.push_back(Outgoing::Text(text));
            for bin in attachments.into_iter().flatten() {
                state.outbox.push_back(Outgoing::Binary(bin.clone()));
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// Mark the session over; true the first time (the caller then cleans up).
    pub fn end(&self, why: Closed) -> bool {
        let first = {
            let mut state = self.state();
            let first = state.closed.is_none();
            if first {
                state.closed = Some(why);
                state.partial = None;
            }
            first
        };
        self.waker.wake();
        first
    }

    pub fn is_connected(&self) -> bool {
        self.state().connected
    }

    pub fn transport(&self) -> Transport {
        self.state().transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_queues_until_it_ends_or_its_client_falls_too_far_behind() {
        let s = Session::new(Transport::WebSocket);
        assert_ne!(s.sid, s.id, "the Engine.IO id is not the socket's public id");
        for _ in 0..MAX_QUEUED - 1 {
            s.push(Outgoing::text("2")).unwrap();
        }
        let bins: VecDeque<Bytes> = [Bytes::from_static(b"x")].into();
        assert_eq!(
            s.push_with(Bytes::from_static(b"451-[]"), Some(&bins)),
            Err(Closed::TooSlow)
        );
        s.push(Outgoing::text("2")).unwrap();
        assert_eq!(s.push(Outgoing::text("2")), Err(Closed::TooSlow));
        s.state().outbox.clear();
        s.push_with(Bytes::from_static(b"451-[]"), Some(&bins)).unwrap();
        assert_eq!(s.state().outbox.len(), 2);
        assert!(s.end(Closed::ByClient));
        assert!(!s.end(Closed::Shutdown), "ends once");
        assert_eq!(s.state().closed, Some(Closed::ByClient));
        assert_eq!(s.push(Outgoing::text("2")), Err(Closed::ByClient));
    }
}

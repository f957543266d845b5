//! The worker's own Socket.IO server: Engine.IO 4 (long-polling, WebSocket, the upgrade
//! between them, heartbeats) and Socket.IO 5 on namespace `/`, what socket.io-client 4
//! speaks and Node's `socket.io` 4 serves. It replaces socketioxide for one reason,
//! memory: socketioxide gives every client a 128-slot channel (5.4 KB), three tasks and a
//! 4 KiB read buffer, 22 KB in all, where Node needs 12; here an idle client is its
//! [`Session`], one connection task and its room entries (benches/README.md has the
//! figures).
//!
//! [`Io`] owns the sessions and the rooms and is what the rest of the worker calls:
//! deliver a packet to the sockets `BroadcastOptions` select, ask for acks, move sockets
//! between rooms, disconnect them. `service` answers the HTTP requests under
//! `/socket.io/`, `ws` and `polling` move the bytes of each transport, `receive` decides
//! what each packet from a client does, `eio`, `packet` and `frames` read and write the
//! three protocols. The worker's behaviour plugs in through [`Hooks`]. Nothing here
//! knows about Redis.

mod eio;
mod frames;
pub mod packet;
mod polling;
mod receive;
mod rooms;
mod service;
mod session;
#[cfg(test)]
mod testing;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use serde_json::Value as Json;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::{Sid, Value};
use tokio::sync::oneshot;

use eio::Outgoing;
use rooms::Rooms;
use session::Session;
pub use session::{Closed, Transport};

/// Timings and limits of the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the server pings each client, and how long it waits for the pong.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long a new session may take to connect to `/`.
    pub connect_timeout: Duration,
    /// How long a WebSocket may take to complete the upgrade of a polling session.
    pub upgrade_timeout: Duration,
    /// Largest message on either transport (a polling POST body, a WebSocket message) and
    /// largest total of the binary attachments of one packet.
    pub max_payload: usize,
    /// How long a client has to send every attachment it announced.
    pub attachment_deadline: Duration,
}

/// An event a client sent on `/`.
#[derive(Debug)]
pub struct Event {
    /// The JSON array: the event name, then its arguments (binary ones as placeholders).
    pub args: Vec<Json>,
    pub attachments: Option<VecDeque<Bytes>>,
    /// The ack id, if the client waits for an answer.
    pub ack: Option<i64>,
}

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the worker does with its sockets.
pub trait Hooks: Send + Sync + 'static {
    /// A socket asked to connect to `/`; the CONNECT answer waits for this.
    fn connecting(&self, socket: Socket) -> BoxFuture;
    /// It is connected (called once, and before `disconnected`).
    fn connected(&self, socket: &Socket);
    fn event(&self, socket: Socket, event: Event);
    /// A connected socket is gone (called once).
    fn disconnected(&self, socket: &Socket, why: Closed);
    /// A session was closed for attachments not sent in time.
    fn attachments_overdue(&self);
}

/// Why an ack did not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no acknowledgement in time")]
    Timeout,
    #[error("the socket closed first")]
    Closed,
}

/// One ack per socket a packet went to: the socket and its answer.
pub type LocalAcks = FuturesUnordered<Pin<Box<dyn Future<Output = (Sid, Result<Value, AckError>)> + Send>>>;

pub struct Io {
    config: Config,
    hooks: OnceLock<Arc<dyn Hooks>>,
    /// By Engine.IO session id.
    sessions: RwLock<HashMap<Sid, Arc<Session>>>,
    /// Connected sockets, by Socket.IO id.
    sockets: RwLock<HashMap<Sid, Arc<Session>>>,
    rooms: Rooms,
    /// Acks this server waits for, by socket and ack id.
    acks: Mutex<HashMap<(Sid, i64), oneshot::Sender<Value>>>,
    next_ack: AtomicI64,
    generations: AtomicU64,
}

/// A socket, as the worker's handlers see it.
#[derive(Clone)]
pub struct Socket {
    io: Arc<Io>,
    session: Arc<Session>,
}

impl Io {
    pub fn new(config: Config) -> Arc<Io> {
        Arc::new(Io {
            config,
            hooks: OnceLock::new(),
            sessions: RwLock::default(),
            sockets: RwLock::default(),
            rooms: Rooms::default(),
            acks: Mutex::default(),
            next_ack: AtomicI64::new(0),
            generations: AtomicU64::new(0),
        })
    }

    /// Set once, before the first request is served.
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) {
        let _ = self.hooks.set(hooks);
    }

    fn hooks(&self) -> Option<&Arc<dyn Hooks>> {
        self.hooks.get()
    }

    /// Answer a request under `/socket.io/`.
    pub async fn serve(self: Arc<Self>, req: axum::extract::Request) -> axum::response::Response {
        service::serve(self, req).await
    }

    fn session(&self, sid: Sid) -> Option<Arc<Session>> {
        self.sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sid)
            .cloned()
    }

    fn socket(&self, id: Sid) -> Option<Arc<Session>> {
        self.sockets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The sessions of the sockets `opts` selects that are connected (their CONNECT
    /// answer queued, so nothing reaches a client before it).
    fn targets(&self, opts: &BroadcastOptions) -> Vec<Arc<Session>> {
        let ids = self.select(opts);
        let sockets = self.sockets.read().unwrap_or_else(PoisonError::into_inner);
        ids.iter()
            .filter_map(|id| sockets.get(id))
            .filter(|s| s.is_connected())
            .cloned()
            .collect()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The connected sockets `opts` selects.
    pub fn select(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        let connected = |id| {
            self.sockets
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(&id)
        };
        let all = || {
            self.sockets
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .copied()
                .collect()
        };
        self.rooms.select(opts, connected, all)
    }

    /// Send `packet` to the sockets `opts` selects; how many it was queued for.
    pub fn deliver(self: &Arc<Self>, packet: &Packet, opts: &BroadcastOptions) -> usize {
        let Some((text, bins)) = packet::encode(packet) else {
            return 0;
        };
        let volatile = opts.has_flag(BroadcastFlags::Volatile);
        let mut sent = 0;
        for session in self.targets(opts) {
            if volatile && !session.state().outbox.is_empty() {
                continue;
            }
            match session.push_with(text.clone(), bins.as_ref()) {
                Ok(()) => sent += 1,
                Err(Closed::TooSlow) => self.close(&session, Closed::TooSlow),
                Err(_) => {}
            }
        }
        sent
    }

    /// Send `packet` (an event) to the sockets `opts` selects, each asked for an ack; the
    /// acks as they come (each at most `timeout` later), and how many sockets it went to.
    pub fn deliver_with_ack(
        self: &Arc<Self>,
        packet: &Packet,
        opts: &BroadcastOptions,
        timeout: Duration,
    ) -> (LocalAcks, usize) {
        let acks = LocalAcks::new();
        let (PacketData::Event(value, _) | PacketData::BinaryEvent(value, _)) = &packet.inner else {
            return (acks, 0);
        };
        for session in self.targets(opts) {
            let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
            let asked = Packet {
                inner: PacketData::Event(value.clone(), Some(id)),
                ns: packet.ns.clone(),
            };
            let Some((text, bins)) = packet::encode(&asked) else {
                continue;
            };
            let (tx, rx) = oneshot::channel();
            let key = (session.id, id);
            self.acks.lock().unwrap_or_else(PoisonError::into_inner).insert(key, tx);
            if let Err(why) = session.push_with(text, bins.as_ref()) {
                self.acks.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                if why == Closed::TooSlow {
                    self.close(&session, why);
                }
                continue;
            }
            let io = Arc::clone(self);
            acks.push(Box::pin(async move {
                let answer = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(_)) => Err(AckError::Closed),
                    Err(_) => {
                        io.acks.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                        Err(AckError::Timeout)
                    }
                };
                (key.0, answer)
            }));
        }
        let n = acks.len();
        (acks, n)
    }

    /// An ack a client sent.
    fn acked(&self, socket: Sid, id: i64, value: Value) {
        let waiting = self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(socket, id));
        if let Some(tx) = waiting {
            let _ = tx.send(value);
        }
    }

    pub fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[Room]) {
        for session in self.targets(opts) {
            for room in rooms {
                self.join(&session, room.clone());
            }
        }
    }

    pub fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[Room]) {
        for session in self.targets(opts) {
            for room in rooms {
                self.leave(&session, room);
            }
        }
    }

    /// Disconnect the sockets `opts` selects (they are told, and do not reconnect).
    pub fn disconnect(self: &Arc<Self>, opts: &BroadcastOptions) {
        for session in self.targets(opts) {
            let _ = session.push(Outgoing::text("41"));
            self.close(&session, Closed::ByServer);
        }
    }

    /// Every room with a member here, the sockets' own rooms included (as Node lists them).
    pub fn rooms(&self) -> Vec<Room> {
        let mut all = self.rooms.names();
        let sockets = self.sockets.read().unwrap_or_else(PoisonError::into_inner);
        all.extend(sockets.keys().map(|id| Room::Owned(id.to_string())));
        all
    }

    /// How many rooms sockets here joined (their own rooms not counted).
    pub fn joined_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Whether a socket here is in `room`.
    pub fn has_members(&self, room: &str) -> bool {
        self.rooms.has(room) || room.parse::<Sid>().is_ok_and(|id| self.socket(id).is_some())
    }

    /// Id and rooms of each socket `opts` selects.
    pub fn fetch(&self, opts: &BroadcastOptions) -> Vec<(Sid, Vec<Room>)> {
        self.targets(opts).iter().map(|s| (s.id, Socket::rooms_of(s))).collect()
    }

    /// Close every session (the worker is stopping; clients reconnect elsewhere).
    pub fn close_all(self: &Arc<Self>) {
        let all: Vec<Arc<Session>> = self
            .sessions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for session in all {
            self.close(&session, Closed::Shutdown);
        }
    }

    fn join(&self, session: &Session, room: Room) {
        if room.as_ref() == session.id.as_str() {
            return; // its own room, always
        }
        // The room is indexed under the session's lock, so a close cannot miss it.
        let mut state = session.state();
        if state.closed.is_some() || state.rooms.contains(&room) {
            return;
        }
        state.rooms.reserve_exact(1); // most sockets join one or two rooms
        state.rooms.push(room.clone());
        self.rooms.add(session.id, room);
    }

    fn leave(&self, session: &Session, room: &str) {
        let mut state = session.state();
        if let Some(at) = state.rooms.iter().position(|r| r == room) {
            state.rooms.swap_remove(at);
            self.rooms.remove(session.id, room);
        }
    }

    fn register(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions.write().unwrap_or_else(PoisonError::into_inner);
        sessions.insert(session.sid, Arc::clone(session));
    }

    /// End `session` for `why` and forget it: tables, rooms, acks; the hooks hear of a
    /// connected socket's end. Once per session, whoever calls first.
    fn close(self: &Arc<Self>, session: &Arc<Session>, why: Closed) {
        if !session.end(why) {
            return;
        }
        tracing::debug!(sid = %session.id, ?why, "socket closed");
        let (connected, rooms) = {
            let mut state = session.state();
            (state.connected, std::mem::take(&mut state.rooms))
        };
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session.sid);
        self.sockets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session.id);
        for room in rooms {
            self.rooms.remove(session.id, &room);
        }
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(id, _), _| *id != session.id);
        if connected && let Some(hooks) = self.hooks() {
            hooks.disconnected(&Socket::new(self, session), why);
        }
    }

    fn generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }
}

impl Socket {
    fn new(io: &Arc<Io>, session: &Arc<Session>) -> Socket {
        Socket {
            io: Arc::clone(io),
            session: Arc::clone(session),
        }
    }

    pub fn id(&self) -> Sid {
        self.session.id
    }

    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// Join `room` (its own room needs no joining).
    pub fn join(&self, room: Room) {
        self.io.join(&self.session, room);
    }

    pub fn leave(&self, room: &str) {
        self.io.leave(&self.session, room);
    }

    /// Its rooms, its own first.
    pub fn rooms(&self) -> Vec<Room> {
        Socket::rooms_of(&self.session)
    }

    fn rooms_of(session: &Session) -> Vec<Room> {
        let state = session.state();
        let mut rooms = Vec::with_capacity(1 + state.rooms.len());
        rooms.push(Room::Owned(session.id.to_string()));
        rooms.extend(state.rooms.iter().cloned());
        rooms
    }

    /// Answer the client's event `id` with `args` (a JSON array).
    pub fn ack(&self, id: i64, args: &Json) {
        let packet = Packet {
            inner: PacketData::EventAck(Value::Str(args.to_string().into(), None), id),
            ns: "/".into(),
        };
        if let Some((text, _)) = packet::encode(&packet)
            && self.session.push_with(text, None) == Err(Closed::TooSlow)
        {
            self.io.close(&self.session, Closed::TooSlow);
        }
    }
}

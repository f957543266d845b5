//! `NodeRedisAdapter`: a socketioxide adapter whose rooms span every server on one Redis
//! or a Redis Cluster, edgepin and Node.js workers (`@socket.io/redis-adapter` 8.x:
//! `createAdapter` on one Redis, `createShardedAdapter` on a cluster) alike. The link's
//! dialect says which protocol; this file is the same for both, but for encoding.
//!
//! What crosses servers: room broadcasts both ways; broadcasts with acks both ways (acks
//! relayed back to the emitting server, see `acks`); `fetch_sockets` (ids and rooms from
//! every server, so member counts include Node sockets); remote join, leave and disconnect
//! both ways; `server_count`. Answered for Node servers: `allRooms` and `allSockets`. Not
//! supported: `serverSideEmit` (socketioxide has no server-side event API).
//!
//! A broadcast is delivered to this worker's sockets first, then queued for Redis, so
//! local members get it whatever state Redis is in. Messages from other servers for a
//! room without a member here are dropped unread. On a cluster each room with a member
//! here has its channel subscribed: when a socket joins (`ensure_rooms`, from the event
//! handlers and remote joins) and every `ROOM_SYNC` against the rooms actually held.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide_core::Sid;
use socketioxide_core::adapter::errors::{BroadcastError, SocketError};
use socketioxide_core::adapter::{
    BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, RemoteSocketData, Room, RoomParam,
    SocketEmitter,
};
use socketioxide_core::packet::Packet;

use super::acks::MergedAcks;
use super::redis_link::{Inbox, LinkError, RedisLink};
use super::wire::sharded::{self, Incoming, Sender};
use super::wire::{self, Channels, Dialect, FetchedSocket, RequestBody, Target, request_type};

/// How long a request waits for the other servers' responses (the Node adapter's default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// On a cluster, how often the subscribed room channels are matched with the rooms held.
const ROOM_SYNC: Duration = Duration::from_secs(2);

pub struct NodeRedisAdapter<E> {
    local: CoreLocalAdapter<E>,
    link: Arc<RedisLink>,
    channels: Channels,
    /// How this server's own broadcasts start, to skip them unread when Redis echoes them.
    own_broadcast: Vec<u8>,
}

impl<E> DefinedAdapter for NodeRedisAdapter<E> {}

impl<E: SocketEmitter> CoreAdapter<E> for NodeRedisAdapter<E> {
    type Error = LinkError;
    type State = Arc<RedisLink>;
    type AckStream = MergedAcks<E::AckStream, E::AckError>;
    type InitRes = ();

    fn new(link: &Arc<RedisLink>, local: CoreLocalAdapter<E>) -> Self {
        let channels = link.channels(local.path());
        NodeRedisAdapter {
            own_broadcast: wire::broadcast_prefix(link.uid()),
            local,
            link: Arc::clone(link),
            channels,
        }
    }

    /// Ready at once: the link subscribes now or as soon as Redis is reachable.
    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) {
        let inbox: Weak<dyn Inbox> = Arc::downgrade(&self) as Weak<dyn Inbox>;
        self.link.register(self.local.path(), self.channels.clone(), inbox);
        if self.channels.dialect == Dialect::Sharded {
            tokio::spawn(sync_rooms(Arc::downgrade(&self)));
        }
        on_success();
    }

    async fn close(&self) -> Result<(), LinkError> {
        self.link.unregister(self.local.path());
        Ok(())
    }

    async fn server_count(&self) -> Result<u16, LinkError> {
        let n = self.link.server_count(&self.channels).await?;
        Ok(u16::try_from(n).unwrap_or(u16::MAX))
    }

    async fn broadcast(&self, packet: Packet, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        let remote = (!opts.is_local(self.local.server_id())).then(|| match self.channels.dialect {
            Dialect::Classic => wire::encode_broadcast(self.link.uid(), &packet, &opts),
            Dialect::Sharded => sharded::broadcast(&self.sender(), &packet, &opts),
        });
        let channel = wire::broadcast_channel(&self.channels, &opts);
        let delivered = self.deliver(packet, opts);
        match remote {
            Some(Ok(bytes)) => {
                // Down or full: counted by the link; local members have it already.
                let _ = self.link.publish(channel, bytes);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "broadcast not relayed to other servers"),
            None => {}
        }
        delivered.map_err(BroadcastError::from)
    }

    /// Every server's sockets; acks from the others are relayed over Redis. With Redis
    /// down, this worker's sockets only.
    async fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> Result<Self::AckStream, LinkError> {
        let timeout = timeout.unwrap_or_else(|| self.local.ack_timeout());
        let (local, _) = self
            .local
            .broadcast_with_ack(packet.clone(), opts.clone(), Some(timeout));
        if opts.is_local(self.local.server_id()) || !self.link.is_up() {
            return Ok(MergedAcks::local(local));
        }
        // The local members have it already: whatever fails below, their acks still count.
        let request_id = wire::random_id(6);
        let relayed = async {
            let others = self.link.server_count(&self.channels).await?.saturating_sub(1);
            if others == 0 {
                return Ok(None);
            }
            let request = match self.channels.dialect {
                Dialect::Classic => wire::broadcast_ack_request(self.link.uid(), &request_id, &packet, &opts, timeout),
                Dialect::Sharded => sharded::broadcast_with_ack(&self.sender(), &request_id, &packet, &opts, timeout),
            }
            .map_err(|e| LinkError::Unrelayable(e.to_string()))?;
            let responses = self.link.responses(&request_id);
            self.link.publish(self.channels.request.clone(), request)?;
            Ok::<_, LinkError>(Some((responses, others)))
        };
        Ok(match relayed.await {
            Ok(Some((responses, others))) => MergedAcks::with_remote(local, responses, others, timeout),
            Ok(None) => MergedAcks::local(local),
            Err(e) => {
                tracing::warn!(error = %e, "broadcast with ack reached this worker's sockets only");
                MergedAcks::local(local)
            }
        })
    }

    /// Applied here, then asked of the other servers; an error means only the latter failed.
    async fn add_sockets(&self, opts: BroadcastOptions, rooms: impl RoomParam) -> Result<(), LinkError> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        self.local.add_sockets(opts.clone(), rooms.clone());
        self.hear(&rooms);
        self.remote_action(request_type::REMOTE_JOIN, &opts, &rooms)
    }

    /// Applied here, then asked of the other servers; an error means only the latter failed.
    async fn del_sockets(&self, opts: BroadcastOptions, rooms: impl RoomParam) -> Result<(), LinkError> {
        let rooms: Vec<Room> = rooms.into_room_iter().collect();
        self.local.del_sockets(opts.clone(), rooms.clone());
        self.remote_action(request_type::REMOTE_LEAVE, &opts, &rooms)
    }

    async fn disconnect_socket(&self, opts: BroadcastOptions) -> Result<(), BroadcastError> {
        let local = self.local.disconnect_socket(opts.clone());
        self.remote_action(request_type::REMOTE_DISCONNECT, &opts, &[])
            .map_err(|e| BroadcastError::Adapter(e.into()))?;
        local.map_err(BroadcastError::Socket)
    }

    /// Sockets on every server. Node sockets whose ids do not fit socketioxide's `Sid`
    /// (20 characters, not 16) are left out: count with `fetch_remote` instead.
    async fn fetch_sockets(&self, opts: BroadcastOptions) -> Result<Vec<RemoteSocketData>, LinkError> {
        let mut sockets = self.local.fetch_sockets(opts.clone());
        if opts.has_flag(BroadcastFlags::Local) {
            return Ok(sockets);
        }
        for (id, _rooms) in fetch_remote(&self.link, &self.channels, &opts).await? {
            match id.parse::<Sid>() {
                Ok(id) => sockets.push(RemoteSocketData {
                    id,
                    server_id: socketioxide_core::Uid::ZERO,
                    ns: self.local.path().clone(),
                }),
                Err(_) => tracing::debug!(id, "remote socket id does not fit a socketioxide Sid; left out"),
            }
        }
        Ok(sockets)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        &self.local
    }
}

/// Id and rooms of the sockets `opts` selects on every *other* server (a `fetchSockets`
/// request answered by edgepin and Node workers alike).
pub async fn fetch_remote(
    link: &Arc<RedisLink>,
    channels: &Channels,
    opts: &BroadcastOptions,
) -> Result<Vec<(String, Vec<Room>)>, LinkError> {
    let others = link.server_count(channels).await?.saturating_sub(1);
    let request_id = wire::random_id(6);
    let request = match channels.dialect {
        Dialect::Classic => wire::fetch_request(link.uid(), &request_id, opts),
        Dialect::Sharded => {
            let from = Sender {
                uid: link.uid(),
                nsp: channels.nsp(),
            };
            sharded::fetch(&from, &request_id, opts)
        }
    };
    let responses = link
        .request(channels, &request_id, request, others, REQUEST_TIMEOUT)
        .await?;
    Ok(responses.iter().flat_map(wire::Response::fetched_sockets).collect())
}

/// Every `ROOM_SYNC`, while the adapter lives: subscribe the channels of the rooms held
/// here, unsubscribe those of rooms left.
async fn sync_rooms<E: SocketEmitter>(adapter: Weak<NodeRedisAdapter<E>>) {
    let mut tick = tokio::time::interval(ROOM_SYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(adapter) = adapter.upgrade() else { return };
        let path = adapter.local.path().to_string();
        let held = || {
            let mut all = BroadcastOptions::default();
            all.add_flag(BroadcastFlags::Broadcast);
            adapter
                .local
                .rooms(all)
                .into_iter()
                .map(String::from)
                .collect::<HashSet<_>>()
        };
        adapter.link.sync_rooms(&path, held).await;
    }
}

impl<E: SocketEmitter> NodeRedisAdapter<E> {
    /// This server, as the sharded protocol names it.
    fn sender(&self) -> Sender<'_> {
        Sender {
            uid: self.link.uid(),
            nsp: self.local.path(),
        }
    }

    /// Make sure this worker hears `rooms` (a cluster subscribes their channels).
    fn hear(&self, rooms: &[Room]) {
        if self.channels.dialect == Dialect::Sharded && !rooms.is_empty() {
            let (link, path) = (Arc::clone(&self.link), self.local.path().to_string());
            let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
            tokio::spawn(async move { link.ensure_rooms(&path, rooms).await });
        }
    }

    /// Deliver to this worker's sockets, counting the packets sent.
    fn deliver(&self, packet: Packet, opts: BroadcastOptions) -> Result<(), Vec<SocketError>> {
        let recipients = self.local.sockets(opts.clone()).len();
        if recipients == 0 {
            return Ok(());
        }
        self.link.metrics.messages_out.inc_by(recipients as u64);
        self.local.broadcast(packet, opts)
    }

    /// Ask the other servers to join, leave or disconnect the sockets `opts` selects.
    fn remote_action(&self, kind: u64, opts: &BroadcastOptions, rooms: &[Room]) -> Result<(), LinkError> {
        if opts.is_local(self.local.server_id()) {
            return Ok(());
        }
        let request = match self.channels.dialect {
            Dialect::Classic => wire::remote_action_request(self.link.uid(), kind, opts, rooms, false),
            Dialect::Sharded => sharded::remote_action(&self.sender(), kind, opts, rooms, false),
        };
        self.link.publish(self.channels.request.clone(), request)
    }

    /// Whether a socket here is in `room`.
    fn has_members(&self, room: &str) -> bool {
        let mut members = BroadcastOptions::default();
        members.rooms.push(Room::Owned(room.to_string()));
        !self.local.sockets(members).is_empty()
    }

    /// Whether `id` is a socket connected here.
    fn local_socket(&self, id: &str) -> Option<Sid> {
        let sid = id.parse::<Sid>().ok()?;
        (!self.local.fetch_sockets(BroadcastOptions::new(sid)).is_empty()).then_some(sid)
    }

    /// Answer server `requester` (classic: on the shared response channel).
    fn respond(&self, requester: Option<&str>, bytes: Vec<u8>) {
        // Down: the requester times out, as it would with a dead server.
        let _ = self.link.publish(self.channels.reply_to(requester), bytes);
    }

    /// A remote join (`join`) or leave of the local sockets `target` names.
    fn move_sockets(&self, request_id: &str, target: Target, rooms: Vec<Room>, join: bool) {
        match (target, join) {
            (Target::Matching(opts), true) => {
                self.hear(&rooms);
                self.local.add_sockets(*opts, rooms)
            }
            (Target::Matching(opts), false) => self.local.del_sockets(*opts, rooms),
            (Target::Socket(sid), _) => {
                let Some(sid) = self.local_socket(&sid) else { return };
                if join {
                    self.hear(&rooms);
                    self.local.add_all(sid, rooms);
                } else {
                    self.local.del(sid, rooms);
                }
                self.respond(None, wire::done_response(request_id));
            }
        }
    }

    /// Answer a request of server `requester`.
    fn answer(&self, requester: Option<&str>, request_id: Option<&str>, body: RequestBody) {
        let id = request_id.unwrap_or_default();
        let sharded = self.channels.dialect == Dialect::Sharded;
        match body {
            RequestBody::Sockets(opts) => {
                let ids: Vec<String> = self.local.sockets(opts).iter().map(Sid::to_string).collect();
                self.respond(requester, wire::sockets_response(id, &ids));
            }
            RequestBody::AllRooms => {
                let mut all = BroadcastOptions::default();
                all.add_flag(BroadcastFlags::Broadcast);
                let rooms: Vec<String> = self.local.rooms(all).into_iter().map(String::from).collect();
                self.respond(requester, wire::rooms_response(id, &rooms));
            }
            RequestBody::Fetch(opts) => {
                let sockets: Vec<FetchedSocket> = self
                    .local
                    .fetch_sockets(opts)
                    .into_iter()
                    .map(|s| FetchedSocket {
                        id: s.id.to_string(),
                        rooms: self.local.socket_rooms(s.id).into_iter().map(String::from).collect(),
                    })
                    .collect();
                let bytes = match sharded {
                    false => wire::fetch_response(id, &sockets),
                    true => sharded::fetch_response(&self.sender(), id, &sockets),
                };
                self.respond(requester, bytes);
            }
            RequestBody::Join { target, rooms } => self.move_sockets(id, target, rooms, true),
            RequestBody::Leave { target, rooms } => self.move_sockets(id, target, rooms, false),
            RequestBody::Disconnect { target, close: _ } => {
                let opts = match target {
                    Target::Matching(opts) => *opts,
                    Target::Socket(sid) => match self.local_socket(&sid) {
                        Some(sid) => {
                            self.respond(requester, wire::done_response(id));
                            BroadcastOptions::new(sid)
                        }
                        None => return,
                    },
                };
                if let Err(e) = self.local.disconnect_socket(opts) {
                    tracing::debug!(errors = ?e, "remote disconnect");
                }
            }
            RequestBody::BroadcastWithAck { packet, opts, timeout } => {
                let (acks, count) = self.local.broadcast_with_ack(packet, opts, timeout);
                let counted = match sharded {
                    false => wire::client_count_response(id, count),
                    true => sharded::client_count_response(&self.sender(), id, count),
                };
                self.respond(requester, counted);
                if count == 0 {
                    return;
                }
                let link = Arc::clone(&self.link);
                let (channel, id) = (self.channels.reply_to(requester), id.to_string());
                let nsp = self.local.path().to_string();
                tokio::spawn(async move {
                    let mut acks = std::pin::pin!(acks);
                    while let Some((_sid, ack)) = acks.next().await {
                        let Ok(value) = ack else { continue };
                        let from = Sender {
                            uid: link.uid(),
                            nsp: &nsp,
                        };
                        let relayed = match sharded {
                            false => wire::broadcast_ack_response(&id, &value),
                            true => sharded::ack_response(&from, &id, &value),
                        };
                        match relayed {
                            Ok(bytes) => {
                                let _ = link.publish(channel.clone(), bytes);
                            }
                            Err(e) => tracing::debug!(error = %e, "ack not relayed"),
                        }
                    }
                });
            }
            RequestBody::ServerSideEmit => tracing::debug!("serverSideEmit is not supported; ignored"),
            RequestBody::Unknown(kind) => tracing::debug!(kind, "unknown request type; ignored"),
        }
    }
}

impl<E: SocketEmitter> Inbox for NodeRedisAdapter<E> {
    fn on_broadcast(&self, room: Option<&str>, payload: &[u8]) {
        if let Some(room) = room
            && !self.has_members(room)
        {
            return;
        }
        if payload.starts_with(&self.own_broadcast) {
            return;
        }
        let message = match wire::decode_broadcast(payload) {
            Ok(m) => m,
            Err(e) => return self.link.reject("broadcast", &e),
        };
        if message.uid == self.link.uid() || message.packet.ns != *self.local.path() {
            return;
        }
        if let Err(e) = self.deliver(message.packet, message.opts) {
            tracing::debug!(errors = ?e, "remote broadcast not delivered to every local socket");
        }
    }

    fn on_request(&self, payload: &[u8]) {
        match wire::decode_request(payload) {
            Ok(req) if req.uid.as_deref() == Some(self.link.uid()) => {}
            Ok(req) => self.answer(req.uid.as_deref(), req.id.as_deref(), req.body),
            Err(e) => self.link.reject("request", &e),
        }
    }

    fn on_message(&self, room: Option<&str>, payload: &[u8]) {
        if let Some(room) = room
            && !self.has_members(room)
        {
            return;
        }
        let (uid, nsp, incoming) = match sharded::decode(payload) {
            Ok(m) => m,
            Err(e) => return self.link.reject("message", &e),
        };
        if uid == self.link.uid() || *nsp != **self.local.path() {
            return;
        }
        match incoming {
            Incoming::Broadcast(message) => {
                if let Err(e) = self.deliver(message.packet, message.opts) {
                    tracing::debug!(errors = ?e, "remote broadcast not delivered to every local socket");
                }
            }
            Incoming::Request(req) => self.answer(Some(&uid), req.id.as_deref(), req.body),
            Incoming::Response(response) => self.link.deliver_response(response),
            Incoming::Ignored(kind) => tracing::debug!(kind, "message type not used here; ignored"),
        }
    }
}

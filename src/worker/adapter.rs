//! `NodeRedisAdapter`: a socketioxide adapter whose rooms span every server on one Redis,
//! edgepin and Node.js workers (`@socket.io/redis-adapter` 8.x) alike.
//!
//! What crosses servers: room broadcasts both ways; broadcasts with acks both ways (acks
//! relayed back to the emitting server, see `acks`); `fetch_sockets` (ids and rooms from
//! every server, so member counts include Node sockets); remote join, leave and disconnect
//! both ways; `server_count`. Answered for Node servers: `allRooms` and `allSockets`. Not
//! supported: `serverSideEmit` (socketioxide has no server-side event API).
//!
//! A broadcast is delivered to this worker's sockets first, then queued for Redis, so
//! local members get it whatever state Redis is in. Messages from other servers for a
//! room without a member here are dropped unread.

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
use super::wire::{self, Channels, FetchedSocket, RequestBody, Target, request_type};

/// How long a request waits for the other servers' responses (the Node adapter's default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
        let channels = Channels::new(link.prefix(), local.path(), link.uid());
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
        let remote =
            (!opts.is_local(self.local.server_id())).then(|| wire::encode_broadcast(self.link.uid(), &packet, &opts));
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
            let request = wire::broadcast_ack_request(self.link.uid(), &request_id, &packet, &opts, timeout)
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
    let request = wire::fetch_request(link.uid(), &request_id, opts);
    let responses = link
        .request(channels, &request_id, request, others, REQUEST_TIMEOUT)
        .await?;
    Ok(responses.iter().flat_map(wire::Response::fetched_sockets).collect())
}

impl<E: SocketEmitter> NodeRedisAdapter<E> {
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
        let request = wire::remote_action_request(self.link.uid(), kind, opts, rooms, false);
        self.link.publish(self.channels.request.clone(), request)
    }

    /// Whether `id` is a socket connected here.
    fn local_socket(&self, id: &str) -> Option<Sid> {
        let sid = id.parse::<Sid>().ok()?;
        (!self.local.fetch_sockets(BroadcastOptions::new(sid)).is_empty()).then_some(sid)
    }

    fn respond(&self, bytes: Vec<u8>) {
        // Down: the requester times out, as it would with a dead server.
        let _ = self.link.publish(self.channels.response.clone(), bytes);
    }

    /// A remote join (`join`) or leave of the local sockets `target` names.
    fn move_sockets(&self, request_id: &str, target: Target, rooms: Vec<Room>, join: bool) {
        match (target, join) {
            (Target::Matching(opts), true) => self.local.add_sockets(*opts, rooms),
            (Target::Matching(opts), false) => self.local.del_sockets(*opts, rooms),
            (Target::Socket(sid), _) => {
                let Some(sid) = self.local_socket(&sid) else { return };
                if join {
                    self.local.add_all(sid, rooms);
                } else {
                    self.local.del(sid, rooms);
                }
                self.respond(wire::done_response(request_id));
            }
        }
    }

    fn answer(&self, request_id: Option<&str>, body: RequestBody) {
        let id = request_id.unwrap_or_default();
        match body {
            RequestBody::Sockets(opts) => {
                let ids: Vec<String> = self.local.sockets(opts).iter().map(Sid::to_string).collect();
                self.respond(wire::sockets_response(id, &ids));
            }
            RequestBody::AllRooms => {
                let mut all = BroadcastOptions::default();
                all.add_flag(BroadcastFlags::Broadcast);
                let rooms: Vec<String> = self.local.rooms(all).into_iter().map(String::from).collect();
                self.respond(wire::rooms_response(id, &rooms));
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
                self.respond(wire::fetch_response(id, &sockets));
            }
            RequestBody::Join { target, rooms } => self.move_sockets(id, target, rooms, true),
            RequestBody::Leave { target, rooms } => self.move_sockets(id, target, rooms, false),
            RequestBody::Disconnect { target, close: _ } => {
                let opts = match target {
                    Target::Matching(opts) => *opts,
                    Target::Socket(sid) => match self.local_socket(&sid) {
                        Some(sid) => {
                            self.respond(wire::done_response(id));
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
                self.respond(wire::client_count_response(id, count));
                if count == 0 {
                    return;
                }
                let link = Arc::clone(&self.link);
                let (channel, id) = (self.channels.response.clone(), id.to_string());
                tokio::spawn(async move {
                    let mut acks = std::pin::pin!(acks);
                    while let Some((_sid, ack)) = acks.next().await {
                        let Ok(value) = ack else { continue };
                        match wire::broadcast_ack_response(&id, &value) {
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
        if let Some(room) = room {
            let mut members = BroadcastOptions::default();
            members.rooms.push(Room::Owned(room.to_string()));
            if self.local.sockets(members).is_empty() {
                return;
            }
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
            Ok(req) => self.answer(req.id.as_deref(), req.body),
            Err(e) => self.link.reject("request", &e),
        }
    }
}

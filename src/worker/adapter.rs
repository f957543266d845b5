//! `NodeRedisAdapter`: rooms that span every server on one Redis or a Redis Cluster,
//! edgepin and Node.js workers (`@socket.io/redis-adapter` 8.x: `createAdapter` on one
//! Redis, `createShardedAdapter` on a cluster) alike, over the worker's own Socket.IO
//! server (`sio`). The link's dialect says which protocol; this file is the same for both,
//! but for encoding.
//!
//! What crosses servers: room broadcasts both ways; broadcasts with acks both ways (acks
//! relayed back to the emitting server, see `acks`); `fetchSockets` (ids and rooms from
//! every server, so member counts include Node sockets); `serverCount`. Answered for Node
//! servers: remote join, leave and disconnect, `allRooms` and `allSockets`. Not supported:
//! `serverSideEmit` (the worker has no server-side events).
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
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};
use socketioxide_core::packet::Packet;

use super::acks::MergedAcks;
use super::redis_link::{Inbox, LinkError, RedisLink};
use super::sio::{AckError, Io, LocalAcks};
use super::wire::sharded::{self, Incoming, Sender};
use super::wire::{self, Channels, Dialect, FetchedSocket, RequestBody, Target};

/// How long a request waits for the other servers' responses (the Node adapter's default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// On a cluster, how often the subscribed room channels are matched with the rooms held.
const ROOM_SYNC: Duration = Duration::from_secs(2);
/// The only namespace served.
const NSP: &str = "/";

/// The acks of a broadcast: this worker's sockets' and those other servers relay.
pub type Acks = MergedAcks<LocalAcks, AckError>;

pub struct NodeRedisAdapter {
    io: Arc<Io>,
    link: Arc<RedisLink>,
    pub channels: Channels,
    /// How this server's own broadcasts start, to skip them unread when Redis echoes them.
    own_broadcast: Vec<u8>,
}

impl NodeRedisAdapter {
    /// The adapter of namespace `/`, heard from as soon as Redis is reachable.
    pub fn start(io: Arc<Io>, link: Arc<RedisLink>) -> Arc<NodeRedisAdapter> {
        let adapter = Arc::new(NodeRedisAdapter {
            channels: link.channels(NSP),
            own_broadcast: wire::broadcast_prefix(link.uid()),
            io,
            link,
        });
        let inbox: Weak<dyn Inbox> = Arc::downgrade(&adapter) as Weak<dyn Inbox>;
        adapter.link.register(NSP, adapter.channels.clone(), inbox);
        if adapter.channels.dialect == Dialect::Sharded {
            tokio::spawn(sync_rooms(Arc::downgrade(&adapter)));
        }
        adapter
    }

    pub fn stop(&self) {
        self.link.unregister(NSP);
    }

    /// Send `packet` to what `opts` selects on every server: this worker's sockets first,
    /// then the others through Redis (down or full: counted by the link; the local
    /// members have it already).
    pub fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) {
        self.deliver(packet, opts);
        if opts.has_flag(BroadcastFlags::Local) {
            return;
        }
        let encoded = match self.channels.dialect {
            Dialect::Classic => wire::encode_broadcast(self.link.uid(), packet, opts),
            Dialect::Sharded => sharded::broadcast(&self.sender(), packet, opts),
        };
        match encoded {
            Ok(bytes) => {
                let _ = self.link.publish(wire::broadcast_channel(&self.channels, opts), bytes);
            }
            Err(e) => tracing::warn!(error = %e, "broadcast not relayed to other servers"),
        }
    }

    /// Every server's sockets, each asked for an ack; acks from the others are relayed
    /// over Redis. With Redis down, this worker's sockets only.
    pub async fn broadcast_with_ack(&self, packet: &Packet, opts: &BroadcastOptions, timeout: Duration) -> Acks {
        let (local, _) = self.io.deliver_with_ack(packet, opts, timeout);
        if opts.has_flag(BroadcastFlags::Local) || !self.link.is_up() {
            return MergedAcks::local(local);
        }
        // The local members have it already: whatever fails below, their acks still count.
        let request_id = wire::random_id(6);
        let relayed = async {
            let others = self.link.server_count(&self.channels).await?.saturating_sub(1);
            if others == 0 {
                return Ok(None);
            }
            let request = match self.channels.dialect {
                Dialect::Classic => wire::broadcast_ack_request(self.link.uid(), &request_id, packet, opts, timeout),
                Dialect::Sharded => sharded::broadcast_with_ack(&self.sender(), &request_id, packet, opts, timeout),
            }
            .map_err(|e| LinkError::Unrelayable(e.to_string()))?;
            let responses = self.link.responses(&request_id);
            self.link.publish(self.channels.request.clone(), request)?;
            Ok::<_, LinkError>(Some((responses, others)))
        };
        match relayed.await {
            Ok(Some((responses, others))) => MergedAcks::with_remote(local, responses, others, timeout),
            Ok(None) => MergedAcks::local(local),
            Err(e) => {
                tracing::warn!(error = %e, "broadcast with ack reached this worker's sockets only");
                MergedAcks::local(local)
            }
        }
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
async fn sync_rooms(adapter: Weak<NodeRedisAdapter>) {
    let mut tick = tokio::time::interval(ROOM_SYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(adapter) = adapter.upgrade() else { return };
        let held = || adapter.io.rooms().into_iter().map(String::from).collect::<HashSet<_>>();
        adapter.link.sync_rooms(NSP, held).await;
    }
}

impl NodeRedisAdapter {
    /// This server, as the sharded protocol names it.
    fn sender(&self) -> Sender<'_> {
        Sender {
            uid: self.link.uid(),
            nsp: NSP,
        }
    }

    /// Make sure this worker hears `rooms` (a cluster subscribes their channels).
    fn hear(&self, rooms: &[Room]) {
        if self.channels.dialect == Dialect::Sharded && !rooms.is_empty() {
            let link = Arc::clone(&self.link);
            let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
            tokio::spawn(async move { link.ensure_rooms(NSP, rooms).await });
        }
    }

    /// Deliver to this worker's sockets, counting the packets sent.
    fn deliver(&self, packet: &Packet, opts: &BroadcastOptions) {
        let sent = self.io.deliver(packet, opts);
        self.link.metrics.messages_out.inc_by(sent as u64);
    }

    /// Whether `id` is a socket connected here.
    fn local_socket(&self, id: &str) -> Option<Sid> {
        let sid = id.parse::<Sid>().ok()?;
        (!self.io.select(&BroadcastOptions::new(sid)).is_empty()).then_some(sid)
    }

    /// Answer server `requester` (classic: on the shared response channel).
    fn respond(&self, requester: Option<&str>, bytes: Vec<u8>) {
        // Down: the requester times out, as it would with a dead server.
        let _ = self.link.publish(self.channels.reply_to(requester), bytes);
    }

    /// A remote join (`join`) or leave of the local sockets `target` names.
    fn move_sockets(&self, request_id: &str, target: Target, rooms: Vec<Room>, join: bool) {
        let opts = match target {
            Target::Matching(opts) => *opts,
            Target::Socket(sid) => {
                let Some(sid) = self.local_socket(&sid) else { return };
                self.respond(None, wire::done_response(request_id));
                BroadcastOptions::new(sid)
            }
        };
        if join {
            self.hear(&rooms);
            self.io.add_sockets(&opts, &rooms);
        } else {
            self.io.del_sockets(&opts, &rooms);
        }
    }

    /// Answer a request of server `requester`.
    fn answer(&self, requester: Option<&str>, request_id: Option<&str>, body: RequestBody) {
        let id = request_id.unwrap_or_default();
        let sharded = self.channels.dialect == Dialect::Sharded;
        match body {
            RequestBody::Sockets(opts) => {
                let ids: Vec<String> = self.io.select(&opts).iter().map(Sid::to_string).collect();
                self.respond(requester, wire::sockets_response(id, &ids));
            }
            RequestBody::AllRooms => {
                let rooms: Vec<String> = self.io.rooms().into_iter().map(String::from).collect();
                self.respond(requester, wire::rooms_response(id, &rooms));
            }
            RequestBody::Fetch(opts) => {
                let sockets: Vec<FetchedSocket> = self
                    .io
                    .fetch(&opts)
                    .into_iter()
                    .map(|(sid, rooms)| FetchedSocket {
                        id: sid.to_string(),
                        rooms: rooms.into_iter().map(String::from).collect(),
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
                self.io.disconnect(&opts);
            }
            RequestBody::BroadcastWithAck { packet, opts, timeout } => {
                let timeout = timeout.unwrap_or(REQUEST_TIMEOUT);
                let (acks, count) = self.io.deliver_with_ack(&packet, &opts, timeout);
                let count = u32::try_from(count).unwrap_or(u32::MAX);
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
                tokio::spawn(async move {
                    let mut acks = std::pin::pin!(acks);
                    while let Some((_sid, ack)) = acks.next().await {
                        let Ok(value) = ack else { continue };
                        let from = Sender {
                            uid: link.uid(),
                            nsp: NSP,
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

impl Inbox for NodeRedisAdapter {
    fn on_broadcast(&self, room: Option<&str>, payload: &[u8]) {
        if let Some(room) = room
            && !self.io.has_members(room)
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
        if message.uid == self.link.uid() || message.packet.ns != NSP {
            return;
        }
        self.deliver(&message.packet, &message.opts);
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
            && !self.io.has_members(room)
        {
            return;
        }
        let (uid, nsp, incoming) = match sharded::decode(payload) {
            Ok(m) => m,
            Err(e) => return self.link.reject("message", &e),
        };
        if uid == self.link.uid() || *nsp != *NSP {
            return;
        }
        match incoming {
            Incoming::Broadcast(message) => self.deliver(&message.packet, &message.opts),
            Incoming::Request(req) => self.answer(Some(&uid), req.id.as_deref(), req.body),
            Incoming::Response(response) => self.link.deliver_response(response),
            Incoming::Ignored(kind) => tracing::debug!(kind, "message type not used here; ignored"),
        }
    }
}

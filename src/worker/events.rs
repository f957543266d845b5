//! The worker's Socket.IO events on namespace `/` — the contract `integration/node/worker.js`
//! also serves, so clients cannot tell an edgepin worker from a Node one:
//!
//! - `join(room, ack)`: join a room; ack `{ok: true, id}` (or `{ok: false, error}`).
//! - `leave(room)`: leave it.
//! - `say(room, msg)`: `said {from, room, msg}` to every member of the room on every worker
//!   (the sender too, if it is a member).
//! - `whoami(ack)`: ack `{id, transport}`.
//! - `members(room, ack)`: ack `{ok: true, room, members}` counted on every worker, for a
//!   room the socket is in (or `{ok: false, error}`); a few counts at a time per worker,
//!   since each one asks every other worker.
//!
//! Every socket is also in the room named by its own id, as in Node, so a server can reach
//! one socket wherever it is connected. Input is checked here; rooms are kept by `sio`,
//! and broadcasts go through the adapter. An event with another name is ignored.

use std::sync::Weak;

use serde_json::{Value as Json, json};
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};

use super::WorkerState;
use super::adapter::fetch_remote;
use super::redis_link::LinkError;
use super::sio::{self, BoxFuture, Closed, Event, Socket, Transport};

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Most rooms one socket may be in, besides its own.
pub const MAX_ROOMS_PER_SOCKET: usize = 64;

/// The worker's side of every socket (weak: the worker's state owns the server that owns
/// this).
pub struct Handlers(pub Weak<WorkerState>);

impl sio::Hooks for Handlers {
    /// On a cluster, the socket's own room is heard before the client is told it is in.
    fn connecting(&self, socket: Socket) -> BoxFuture {
        let state = self.0.upgrade();
        Box::pin(async move {
            if let Some(state) = state {
                state.link.ensure_rooms("/", [socket.id().to_string()]).await;
            }
        })
    }

    fn connected(&self, socket: &Socket) {
        let Some(state) = self.0.upgrade() else { return };
        state.metrics.sockets.inc();
        tracing::debug!(sid = %socket.id(), transport = ?socket.transport(), "socket connected");
    }

    fn event(&self, socket: Socket, event: Event) {
        let Some(Json::String(name)) = event.args.first() else {
            return;
        };
        let Some(state) = self.0.upgrade() else { return };
        let arg = |i: usize| event.args.get(i);
        match name.as_str() {
            "join" => {
                state.metrics.messages_in.inc();
                // No argument at all reads as null: refused like any other non-string.
                let room = arg(1).cloned().unwrap_or(Json::Null);
                tokio::spawn(async move {
                    let reply = on_join(&state, &socket, &room).await;
                    if let Some(id) = event.ack {
                        socket.ack(id, &json!([reply]));
                    }
                });
            }
            "leave" => {
                state.metrics.messages_in.inc();
                if let Some(Ok(room)) = arg(1).map(joinable_room) {
                    socket.leave(room);
                }
            }
            "say" => {
                state.metrics.messages_in.inc();
                on_say(&state, &socket, event);
            }
            "whoami" => {
                state.metrics.messages_in.inc();
                let transport = match socket.transport() {
                    Transport::WebSocket => "websocket",
                    Transport::Polling => "polling",
                };
                if let Some(id) = event.ack {
                    socket.ack(id, &json!([{ "id": state.id, "transport": transport }]));
                }
            }
            "members" => {
                state.metrics.messages_in.inc();
                let room = arg(1).cloned().unwrap_or(Json::Null);
                tokio::spawn(async move {
                    let reply = on_members(&state, &socket, &room).await;
                    if let Some(id) = event.ack {
                        socket.ack(id, &json!([reply]));
                    }
                });
            }
            _ => {}
        }
    }

    fn disconnected(&self, socket: &Socket, why: Closed) {
        if let Some(state) = self.0.upgrade() {
            state.metrics.sockets.dec();
        }
        tracing::debug!(sid = %socket.id(), reason = ?why, "socket disconnected");
    }

    fn attachments_overdue(&self) {
        if let Some(state) = self.0.upgrade() {
            state.metrics.attachments_overdue.inc();
        }
    }
}

async fn on_join(state: &WorkerState, socket: &Socket, room: &Json) -> Json {
    let rooms = socket.rooms();
    match joinable_room(room) {
        Err(error) => json!({ "ok": false, "error": error }),
        // `rooms` has the socket's own room too; joining a room again changes nothing.
        Ok(room) if rooms.len() > MAX_ROOMS_PER_SOCKET && !rooms.iter().any(|r| r == room) => {
            json!({ "ok": false, "error": format!("a socket may be in at most {MAX_ROOMS_PER_SOCKET} rooms") })
        }
        Ok(room) => {
            socket.join(Room::Owned(room.to_string()));
            // Acked once the room's broadcasts from other workers reach this one.
            state.link.ensure_rooms("/", [room.to_string()]).await;
            json!({ "ok": true, "id": state.id })
        }
    }
}

/// `said {from, room, msg}` to the room on every worker; binary parts of `msg` go along.
fn on_say(state: &WorkerState, socket: &Socket, event: Event) {
    let (room, msg) = match (event.args.get(1), event.args.get(2)) {
        (Some(room), Some(msg)) => match room_name(room) {
            Ok(room) => (room, msg),
            Err(error) => return tracing::debug!(sid = %socket.id(), error, "say ignored"),
        },
        _ => return tracing::debug!(sid = %socket.id(), "say(room, msg) without both arguments ignored"),
    };
    let said = json!(["said", { "from": state.id, "room": room, "msg": msg }]);
    let packet = sio::packet::event(&said, event.attachments, None);
    state.adapter.broadcast(&packet, &to_room(room));
}

async fn on_members(state: &WorkerState, socket: &Socket, room: &Json) -> Json {
    match joinable_room(room) {
        Err(error) => json!({ "ok": false, "error": error }),
        Ok(room) if !socket.rooms().iter().any(|r| r == room) => {
            json!({ "ok": false, "error": "only the rooms this socket is in can be counted" })
        }
        Ok(room) => match state.member_counts.try_acquire() {
            Err(_) => json!({ "ok": false, "error": "busy counting; try again" }),
            Ok(_permit) => match count_members(state, room).await {
                Ok(members) => json!({ "ok": true, "room": room, "members": members }),
                Err((e, _)) => json!({ "ok": false, "error": format!("cannot count on every worker: {e}") }),
            },
        },
    }
}

/// Every socket in `room`, on every server.
pub fn to_room(room: &str) -> BroadcastOptions {
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    opts.rooms.push(Room::Owned(room.to_string()));
    opts
}

/// Members of `room` on every worker (edgepin and Node); on error, why and the members
/// here.
pub async fn count_members(worker: &WorkerState, room: &str) -> Result<usize, (LinkError, usize)> {
    let opts = to_room(room);
    let local = worker.io.select(&opts).len();
    match fetch_remote(&worker.link, &worker.adapter.channels, &opts).await {
        Ok(remote) => Ok(local + remote.len()),
        Err(e) => Err((e, local)),
    }
}

/// A room name: a string of 1 to `MAX_ROOM_LEN` bytes.
pub fn room_name(v: &Json) -> Result<&str, &'static str> {
    match v.as_str() {
        None => Err("room must be a string"),
        Some("") => Err("room must not be empty"),
        Some(r) if r.len() > MAX_ROOM_LEN => Err("room name is too long (128 bytes at most)"),
        Some(r) => Ok(r),
    }
}

/// A room a client may join or leave: also not shaped like a socket id (16 or 20
/// characters of `[A-Za-z0-9_-]`), so no client can listen in on another socket's room.
pub fn joinable_room(v: &Json) -> Result<&str, &'static str> {
    let room = room_name(v)?;
    if looks_like_socket_id(room) {
        Err("room names shaped like socket ids are reserved")
    } else {
        Ok(room)
    }
}

fn looks_like_socket_id(s: &str) -> bool {
    matches!(s.len(), 16 | 20) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_checked() {
        assert_eq!(room_name(&json!("lobby")), Ok("lobby"));
        assert!(room_name(&json!(7)).is_err());
        assert!(room_name(&json!("")).is_err());
        assert!(room_name(&json!("x".repeat(129))).is_err());
        assert!(room_name(&json!("x".repeat(128))).is_ok());
        // Socket ids (socketioxide: 16 chars, Node: 20) are reserved for clients.
        assert!(joinable_room(&json!("NnUyg51kN4WQXNaQAAAA")).is_err());
        assert!(joinable_room(&json!("aB3-_aB3-_aB3-_x")).is_err());
        assert!(joinable_room(&json!("general chat")).is_ok());
        assert!(
            room_name(&json!("aB3-_aB3-_aB3-_x")).is_ok(),
            "servers may target a socket's room"
        );
    }
}

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
//! Every socket also joins the room named by its own id, as in Node, so a server can reach
//! one socket wherever it is connected. Input is checked here; rooms are kept by the adapter.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;
use socketioxide_core::adapter::BroadcastOptions;

use super::adapter::fetch_remote;
use super::redis_link::LinkError;
use super::{WorkerAdapter, WorkerState};

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Most rooms one socket may be in, besides its own.
pub const MAX_ROOMS_PER_SOCKET: usize = 64;

type Socket = SocketRef<WorkerAdapter>;

/// Sets up a socket before the client is told it is connected: socketioxide sends CONNECT
/// and only then spawns the connect handler, so handlers registered there can miss an
/// event the client sends at once (measured: ~1 join in 10,000 went unanswered). A connect
/// middleware runs before CONNECT is sent. Register with `connected.with(set_up)`.
pub async fn set_up(socket: Socket, State(state): State<Arc<WorkerState>>) -> Result<(), Infallible> {
    socket.join(socket.id);
    // On a cluster, the socket's own room is heard before the client is told it is in.
    state.link.ensure_rooms(socket.ns(), [socket.id.to_string()]).await;
    state.metrics.sockets.inc();
    socket.on("join", on_join);
    socket.on("leave", on_leave);
    socket.on("say", on_say);
    socket.on("whoami", on_whoami);
    socket.on("members", on_members);
    socket.on_disconnect(
        async |socket: Socket, reason: DisconnectReason, State(state): State<Arc<WorkerState>>| {
            state.metrics.sockets.dec();
            tracing::debug!(sid = %socket.id, ?reason, "socket disconnected");
        },
    );
    Ok(())
}

/// The connect handler of namespace `/` (everything is set up by `set_up`).
pub async fn connected(socket: Socket) {
    tracing::debug!(sid = %socket.id, transport = ?socket.transport_type(), "socket connected");
}

async fn on_join(
    socket: Socket,
    TryData(room): TryData<Json>,
    ack: AckSender<WorkerAdapter>,
    State(state): State<Arc<WorkerState>>,
) {
    state.metrics.messages_in.inc();
    // No argument at all reads as null: refused like any other non-string.
    let room = room.unwrap_or(Json::Null);
    let rooms = socket.rooms();
    let reply = match joinable_room(&room) {
        Err(error) => json!({ "ok": false, "error": error }),
        // `rooms` has the socket's own room too; joining a room again changes nothing.
        Ok(room) if rooms.len() > MAX_ROOMS_PER_SOCKET && !rooms.iter().any(|r| r == room) => {
            json!({ "ok": false, "error": format!("a socket may be in at most {MAX_ROOMS_PER_SOCKET} rooms") })
        }
        Ok(room) => {
            socket.join(room.to_string());
            // Acked once the room's broadcasts from other workers reach this one.
            state.link.ensure_rooms(socket.ns(), [room.to_string()]).await;
            json!({ "ok": true, "id": state.id })
        }
    };
    let _ = ack.send(&reply);
}

async fn on_leave(socket: Socket, Data(room): Data<Json>, State(state): State<Arc<WorkerState>>) {
    state.metrics.messages_in.inc();
    if let Ok(room) = joinable_room(&room) {
        socket.leave(room.to_string());
    }
}

async fn on_say(
    socket: Socket,
    io: SocketIo<WorkerAdapter>,
    TryData(args): TryData<(Json, Json)>,
    State(state): State<Arc<WorkerState>>,
) {
    state.metrics.messages_in.inc();
    let (room, msg) = match &args {
        Ok((room, msg)) => match room_name(room) {
            Ok(room) => (room, msg),
            Err(error) => return tracing::debug!(sid = %socket.id, error, "say ignored"),
        },
        Err(e) => return tracing::debug!(sid = %socket.id, error = %e, "say(room, msg) ignored"),
    };
    let said = json!({ "from": state.id, "room": room, "msg": msg });
    if let Err(e) = io.to(room.to_string()).emit("said", &said).await {
        tracing::debug!(room, error = %e, "said not delivered to every local member");
    }
}

async fn on_whoami(socket: Socket, ack: AckSender<WorkerAdapter>, State(state): State<Arc<WorkerState>>) {
    state.metrics.messages_in.inc();
    let transport = match socket.transport_type() {
        socketioxide::TransportType::Websocket => "websocket",
        socketioxide::TransportType::Polling => "polling",
    };
    let _ = ack.send(&json!({ "id": state.id, "transport": transport }));
}

async fn on_members(
    socket: Socket,
    io: SocketIo<WorkerAdapter>,
    TryData(room): TryData<Json>,
    ack: AckSender<WorkerAdapter>,
    State(state): State<Arc<WorkerState>>,
) {
    state.metrics.messages_in.inc();
    let room = room.unwrap_or(Json::Null);
    let reply = match joinable_room(&room) {
        Err(error) => json!({ "ok": false, "error": error }),
        Ok(room) if !socket.rooms().iter().any(|r| r == room) => {
            json!({ "ok": false, "error": "only the rooms this socket is in can be counted" })
        }
        Ok(room) => match state.member_counts.try_acquire() {
            Err(_) => json!({ "ok": false, "error": "busy counting; try again" }),
            Ok(_permit) => match count_members(&state, &io, room).await {
                Ok(members) => json!({ "ok": true, "room": room, "members": members }),
                Err((e, _)) => json!({ "ok": false, "error": format!("cannot count on every worker: {e}") }),
            },
        },
    };
    let _ = ack.send(&reply);
}

/// Members of `room` on every worker (edgepin and Node); on error, why and the members
/// here.
pub async fn count_members(
    worker: &WorkerState,
    io: &SocketIo<WorkerAdapter>,
    room: &str,
) -> Result<usize, (LinkError, usize)> {
    let local = io.of("/").map_or(0, |ns| ns.within(room.to_string()).sockets().len());
    let mut opts = BroadcastOptions::default();
    opts.rooms.push(room.to_string().into());
    match fetch_remote(&worker.link, &worker.root_channels, &opts).await {
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

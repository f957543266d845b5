//! What a packet from a client does, whichever transport brought it: pongs, closes,
//! Socket.IO CONNECT (answered once the hooks are ready), events and acks, and the binary
//! attachments of a packet, which must all arrive, within `max_payload` bytes and by the
//! attachment deadline, before it counts (a text packet meanwhile is a protocol error, as
//! in socketioxide). An `Err` means the session must close for that reason.

use std::sync::Arc;

use bytes::Bytes;
use socketioxide_core::Value;

use super::eio::Incoming;
use super::packet::{self, Decoded};
use super::session::{Closed, Partial, PartialKind, Session};
use super::{Event, Io, Socket};

/// Handle one Engine.IO packet (the transports handle `2probe` and `5` themselves).
pub fn receive(io: &Arc<Io>, session: &Arc<Session>, incoming: Incoming<'_>) -> Result<(), Closed> {
    match incoming {
        Incoming::Close => Err(Closed::ByClient),
        Incoming::Pong => {
            session.state().awaiting_pong = false;
            Ok(())
        }
        Incoming::Ping(_) | Incoming::Upgrade | Incoming::Noop => Ok(()),
        Incoming::Message(text) => message(io, session, text),
        Incoming::Binary(bytes) => attachment(io, session, bytes),
    }
}

fn message(io: &Arc<Io>, session: &Arc<Session>, text: &str) -> Result<(), Closed> {
    let decoded = packet::decode(text).map_err(|_| Closed::ProtocolError)?;
    let connected = {
        let state = session.state();
        if state.partial.is_some() {
            return Err(Closed::ProtocolError);
        }
        state.connected
    };
    match decoded {
        Decoded::Connect { nsp } if nsp != "/" => {
            let refusal = format!(r#"44{nsp},{{"message":"Invalid namespace"}}"#);
            session.push(super::eio::Outgoing::Text(Bytes::from(refusal)))
        }
        Decoded::Connect { .. } => {
            connect(io, session);
            Ok(())
        }
        Decoded::Disconnect { nsp } if nsp == "/" => Err(Closed::ByClient),
        Decoded::Ignored | Decoded::Disconnect { .. } => Ok(()),
        // Anything for `/` needs a connected socket; no other namespace is served.
        _ if !connected || decoded.nsp() != "/" => Err(Closed::ProtocolError),
        Decoded::Event {
            args,
            ack,
            attachments: 0,
            ..
        } => {
            dispatch(io, session, args, None, ack);
            Ok(())
        }
        Decoded::Event {
            args, ack, attachments, ..
        } => {
            expect(io, session, PartialKind::Event { args, ack }, attachments);
            Ok(())
        }
        Decoded::Ack {
            id,
            text,
            attachments: 0,
            ..
        } => {
            io.acked(session.id, id, Value::Str(text.into(), None));
            Ok(())
        }
        Decoded::Ack {
            id, text, attachments, ..
        } => {
            expect(io, session, PartialKind::Ack { id, text }, attachments);
            Ok(())
        }
    }
}

/// Connect the socket to `/` once the hooks are ready: answer CONNECT and make it
/// reachable. A second CONNECT is ignored.
fn connect(io: &Arc<Io>, session: &Arc<Session>) {
    {
        let mut state = session.state();
        if state.connected || state.connecting {
            return;
        }
        state.connecting = true;
    }
    let (io, session) = (Arc::clone(io), Arc::clone(session));
    tokio::spawn(async move {
        let socket = Socket::new(&io, &session);
        if let Some(hooks) = io.hooks() {
            hooks.connecting(socket.clone()).await;
        }
        // Reachable first, answered under the lock that a close takes: either the close
        // sees it connected (and forgets it), or this sees the close.
        io.sockets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(session.id, Arc::clone(&session));
        let answer = format!(r#"40{{"sid":"{}"}}"#, session.id);
        let connected = {
            let mut state = session.state();
            if state.closed.is_none() {
                state.connected = true;
                state.outbox.push_back(super::eio::Outgoing::Text(Bytes::from(answer)));
            }
            state.connected
        };
        session.waker.wake();
        if !connected {
            io.sockets
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&session.id);
            return;
        }
        if let Some(hooks) = io.hooks() {
            hooks.connected(&socket);
        }
    });
}

/// A binary event or ack announced `n` attachments: wait for them, up to the deadline.
fn expect(io: &Arc<Io>, session: &Arc<Session>, kind: PartialKind, n: usize) {
    let generation = io.generation();
    session.state().partial = Some(Box::new(Partial {
        kind,
        expected: n,
        received: Default::default(),
        bytes: 0,
        generation,
    }));
    let (io, session) = (Arc::clone(io), Arc::clone(session));
    tokio::spawn(async move {
        tokio::time::sleep(io.config.attachment_deadline).await;
        let overdue = session
            .state()
            .partial
            .as_ref()
            .is_some_and(|p| p.generation == generation);
        if overdue {
            tracing::info!(sid = %session.id, "closing a session whose binary attachments are overdue");
            if let Some(hooks) = io.hooks() {
                hooks.attachments_overdue();
            }
            io.close(&session, Closed::AttachmentsOverdue);
        }
    });
}

fn attachment(io: &Arc<Io>, session: &Arc<Session>, bytes: Bytes) -> Result<(), Closed> {
    let complete = {
        let mut state = session.state();
        let Some(partial) = state.partial.as_mut() else {
            return Err(Closed::ProtocolError); // binary data for no packet
        };
        partial.bytes += bytes.len();
        if partial.bytes > io.config.max_payload {
            return Err(Closed::TooBig);
        }
        partial.received.push_back(bytes);
        if partial.received.len() < partial.expected {
            return Ok(());
        }
        state.partial.take()
    };
    let Some(partial) = complete else { return Ok(()) };
    match partial.kind {
        PartialKind::Event { args, ack } => dispatch(io, session, args, Some(partial.received), ack),
        PartialKind::Ack { id, text } => io.acked(session.id, id, Value::Str(text.into(), Some(partial.received))),
    }
    Ok(())
}

fn dispatch(
    io: &Arc<Io>,
    session: &Arc<Session>,
    args: Vec<serde_json::Value>,
    attachments: Option<std::collections::VecDeque<Bytes>>,
    ack: Option<i64>,
) {
    if let Some(hooks) = io.hooks() {
        let event = Event { args, attachments, ack };
        hooks.event(Socket::new(io, session), event);
    }
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use serde_json::json;
    use socketioxide_core::adapter::BroadcastOptions;

    use super::super::session::Transport;
    use super::super::testing::{connected, server};
    use super::*;

    fn bin(b: &'static [u8]) -> Incoming<'static> {
        Incoming::Binary(Bytes::from_static(b))
    }

    #[tokio::test(start_paused = true)]
    async fn binary_packets_count_once_every_attachment_is_in_within_the_limits() {
        let (io, hooks) = server();
        let s = connected(&io, Transport::WebSocket);
        let two = r#"52-["say","r",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        receive(&io, &s, Incoming::Message(two)).unwrap();
        receive(&io, &s, bin(b"a")).unwrap();
        assert!(hooks.args().is_empty(), "not before the last attachment");
        receive(&io, &s, bin(b"bc")).unwrap();
        {
            let events = hooks.events.lock().unwrap();
            let got: Vec<&[u8]> = events[0].attachments.iter().flatten().map(|b| &b[..]).collect();
            assert_eq!(got, [&b"a"[..], b"bc"]);
        }

        // An ack with an attachment reaches whoever waits for it.
        let ask = super::super::packet::event(&json!(["poll"]), None, None);
        let (mut acks, n) = io.deliver_with_ack(&ask, &BroadcastOptions::new(s.id), Duration::from_secs(5));
        assert_eq!(n, 1);
        let sent = s.state().outbox.pop_back();
        let Some(super::super::eio::Outgoing::Text(sent)) = sent else {
            panic!("{sent:?}")
        };
        let id: i64 = std::str::from_utf8(&sent[2..])
            .unwrap()
            .trim_end_matches(r#"["poll"]"#)
            .parse()
            .unwrap();
        let answer = format!(r#"61-{id}[{{"_placeholder":true,"num":0}}]"#);
        receive(&io, &s, Incoming::Message(&answer)).unwrap();
        receive(&io, &s, bin(b"yes")).unwrap();
        let (who, value) = acks.next().await.unwrap();
        assert_eq!(who, s.id);
        let Value::Str(text, Some(bins)) = value.unwrap() else {
            panic!()
        };
        assert_eq!(
            (text.as_str(), &bins[0][..]),
            (r#"[{"_placeholder":true,"num":0}]"#, &b"yes"[..])
        );

        // What breaks the rules closes the session, for the right reason.
        receive(&io, &s, Incoming::Message(two)).unwrap();
        assert_eq!(
            receive(&io, &s, Incoming::Message(r#"2["x"]"#)),
            Err(Closed::ProtocolError),
            "text while owing"
        );
        let s = connected(&io, Transport::WebSocket);
        assert_eq!(
            receive(&io, &s, bin(b"?")),
            Err(Closed::ProtocolError),
            "binary for nothing"
        );
        receive(&io, &s, Incoming::Message(two)).unwrap();
        receive(&io, &s, Incoming::Binary(Bytes::from(vec![0; 600]))).unwrap();
        assert_eq!(
            receive(&io, &s, Incoming::Binary(Bytes::from(vec![0; 401]))),
            Err(Closed::TooBig)
        );
        let s = connected(&io, Transport::WebSocket);
        assert_eq!(
            receive(&io, &s, Incoming::Message(r#"2/admin,["x"]"#)),
            Err(Closed::ProtocolError)
        );
        assert_eq!(
            receive(&io, &s, Incoming::Message(r#"2{"x":1}"#)),
            Err(Closed::ProtocolError)
        );
        assert_eq!(receive(&io, &s, Incoming::Message("1")), Err(Closed::ByClient));
        assert_eq!(hooks.args().len(), 1, "nothing else was dispatched");

        // An ack nobody waits for (any more) is ignored; a timed-out wait says so.
        let s = connected(&io, Transport::WebSocket);
        receive(&io, &s, Incoming::Message(r#"3999["late"]"#)).unwrap();
        let (mut acks, _) = io.deliver_with_ack(&ask, &BroadcastOptions::new(s.id), Duration::from_secs(5));
        assert_eq!(acks.next().await.unwrap().1, Err(super::super::AckError::Timeout));
        assert!(io.acks.lock().unwrap().is_empty(), "its entry is gone");
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Announce(usize),
            Binary(usize),
            Text,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (1usize..=10).prop_map(Op::Announce),
                (0usize..400).prop_map(Op::Binary),
                Just(Op::Text),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever order announcements, attachments and text come in, an event is
            /// dispatched with exactly the attachments it announced, never more than
            /// `max_payload` bytes are held, and a session ends at the first foul.
            #[test]
            fn attachments_are_held_within_bounds_and_given_to_their_packet(ops in vec(op(), 1..25)) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
                runtime.block_on(async {
                    let (io, hooks) = server();
                    let s = connected(&io, Transport::WebSocket);
                    let mut owed: Option<usize> = None;
                    let mut dispatched = Vec::new();
                    for op in ops {
                        let text;
                        let result = match op {
                            Op::Announce(n) => {
                                let holders: Vec<String> = (0..n).map(|i| format!(r#"{{"_placeholder":true,"num":{i}}}"#)).collect();
                                text = format!(r#"5{n}-["e",{}]"#, holders.join(","));
                                receive(&io, &s, Incoming::Message(&text))
                            }
                            Op::Binary(len) => receive(&io, &s, Incoming::Binary(Bytes::from(vec![7; len]))),
                            Op::Text => receive(&io, &s, Incoming::Message(r#"2["e"]"#)),
                        };
                        if result.is_err() {
                            break;
                        }
                        // The model: what is owed, and what counts.
                        match op {
                            Op::Announce(n) => owed = Some(n),
                            Op::Binary(_) => {
                                let n = owed.expect("binary for nothing is refused");
                                let held = s.state().partial.as_ref().map_or(0, |p| p.received.len());
                                if held == 0 {
                                    dispatched.push(n);
                                    owed = None;
                                }
                            }
                            Op::Text => {
                                prop_assert!(owed.is_none(), "text while owing is refused");
                                dispatched.push(0);
                            }
                        }
                        let bytes = s.state().partial.as_ref().map_or(0, |p| p.bytes);
                        prop_assert!(bytes <= 1000);
                    }
                    let got: Vec<usize> = hooks.events.lock().unwrap().iter().map(|e| e.attachments.as_ref().map_or(0, |a| a.len())).collect();
                    prop_assert_eq!(got, dispatched);
                    Ok(())
                })?;
            }
        }
    }
}

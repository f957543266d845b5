//! One request on the HTTP/1 engine, as one value: its head, its `Account` (counters),
//! the `Record` its access-log line is made of, its sticky `Exchange`, and who sent it.
//! Every step of the exchange takes it (`flow`, `answer`, `local`); the step that ends
//! the request takes it by value, so a request is accounted and logged exactly once.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Network;
use crate::proxy::access::{Record, Requested};
use crate::proxy::account::Account;
use crate::proxy::forwarding::{self, Forwarding};
use crate::sticky::exchange::Exchange;

use super::head::{Body, Head, Kind};

pub(super) struct Ctx<'h> {
    pub head: &'h Head,
    pub acct: Account,
    pub rec: Record,
    /// The sticky rule's view of the request (sid, cookie, what to learn from the answer).
    pub sticky: Exchange,
    /// The client address edgepin decided on (`forwarding::client_ip`).
    pub client: Option<IpAddr>,
    /// Who sent it, as the forwarding fields say (`peer_text` is the connection's).
    pub fwd: Forwarding<'h>,
}

impl<'h> Ctx<'h> {
    /// A request whose head is `head`, from `peer` (as `peer_text`) on the `tls` listener.
    pub fn new(head: &'h Head, acct: Account, peer: Option<IpAddr>, peer_text: &'h [u8], tls: bool) -> Ctx<'h> {
        let trusted_proxies = &acct.snapshot().config.trusted_proxies;
        let trusted = peer.is_some_and(|p| Network::any_contains(trusted_proxies, p));
        let client = if trusted {
            let xff = joined(head.values(Kind::ForwardedFor));
            forwarding::client_ip(peer, (!xff.is_empty()).then_some(&xff[..]), trusted_proxies)
        } else {
            peer
        };
        Ctx {
            head,
            acct,
            rec: Record::default(),
            sticky: Exchange::default(),
            client,
            fwd: Forwarding {
                peer,
                peer_text,
                client,
                peer_trusted: trusted,
                tls,
            },
        }
    }

    /// The request as the access log names it.
    pub fn requested(&self) -> Requested<'h> {
        let head = self.head;
        Requested {
            client: self.client,
            method: head.method_str(),
            host: head.host_bytes().and_then(|h| std::str::from_utf8(h).ok()),
            path: head.path(),
            upgrade: head.websocket,
        }
    }

    /// Its access-log line.
    pub fn log(&self, status: u16, duration: Duration) {
        self.rec.log(
            &self.acct,
            &self.requested(),
            self.sticky.sid.as_deref(),
            status,
            duration,
        );
    }

    /// The request has a body (which a local answer leaves unread).
    pub fn has_body(&self) -> bool {
        self.head.body() != Body::None
    }
}

/// Header lines joined into one list (`a, b`).
fn joined<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.trim_ascii());
    }
    out
}

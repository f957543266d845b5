//! What a client may make the worker hold for it, where socketioxide leaves it open: the
//! Socket.IO binary attachments a client announces and never sends. socketioxide bounds
//! their bytes (the parser limits set in `worker::serve`) but checks their age only when
//! the next one arrives, so a client that announces ten, sends nine and goes quiet holds
//! them for as long as it answers pings. [`Guard`] sits in front of socketioxide and closes
//! such a session `ATTACHMENT_DEADLINE` after the announcement: on WebSocket it reads the
//! client's frames as they pass (`frames`, `upgrade`), on long-polling the POST bodies
//! (`polling`). It also hands socketioxide the request that opens a session with its
//! head copied out of hyper's read buffer (`opening`), since the session keeps it.
//!
//! It never changes what it passes on, keeps no payload, and leaves everything else
//! (sizes, parsing, sessions) to socketioxide; it only counts attachments and keeps time.

mod frames;
mod opening;
mod polling;
mod upgrade;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, header};
use axum::response::Response;
use prometheus::IntCounter;
use socketioxide::service::SocketIoService;

use super::WorkerAdapter;
use frames::Message;

/// How long a client has to send every attachment of a binary packet it announced, from
/// the announcement on; then its session is closed. A client sends them back to back, and
/// at most `MAX_PAYLOAD` bytes of them, so this only ever cuts a stalled client.
pub const ATTACHMENT_DEADLINE: Duration = Duration::from_secs(10);

/// The Socket.IO service (with the worker's HTTP routes behind it) and what guards it.
pub type Inner = SocketIoService<axum::Router, WorkerAdapter>;

/// A tower service in front of socketioxide: every request passes through; Engine.IO
/// WebSocket upgrades and polling POSTs are watched for unfinished attachments.
#[derive(Clone)]
pub struct Guard {
    inner: Inner,
    polling: Arc<polling::Sessions>,
    /// Sessions closed for attachments not sent in time.
    cut: IntCounter,
}

impl Guard {
    pub fn new(inner: Inner, cut: IntCounter) -> Guard {
        Guard {
            inner,
            polling: Arc::default(),
            cut,
        }
    }

    async fn serve(self, req: Request) -> Response {
        match EngineRequest::of(&req) {
            Some(EngineRequest::WebSocket { sid }) => upgrade::accept(self, req, sid),
            Some(EngineRequest::PollingPost { sid }) => polling::post(self, req, sid).await,
            Some(EngineRequest::PollingOpen) => {
                let (mut parts, body) = req.into_parts();
                opening::own(&mut parts);
                self.pass(Request::from_parts(parts, body)).await
            }
            None => self.pass(req).await,
        }
    }

    /// Hand `req` to socketioxide (and the routes behind it).
    async fn pass(&self, req: Request) -> Response {
        use tower::ServiceExt;
        match self.inner.clone().oneshot(req).await {
            Ok(response) => response.map(Body::new),
            Err(never) => match never {},
        }
    }
}

impl tower::Service<Request> for Guard {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let guard = self.clone();
        Box::pin(async move { Ok(guard.serve(req).await) })
    }
}

/// The Engine.IO requests the guard watches (Engine.IO 4, the only version served).
#[derive(Debug, PartialEq, Eq)]
enum EngineRequest {
    /// A WebSocket upgrade, new (`sid: None`) or of a polling session.
    WebSocket { sid: Option<String> },
    /// Packets a polling session sends.
    PollingPost { sid: String },
    /// The request that opens a polling session (a GET without a sid).
    PollingOpen,
}

impl EngineRequest {
    fn of(req: &Request) -> Option<EngineRequest> {
        let path = req.uri().path();
        if path != "/socket.io" && !path.starts_with("/socket.io/") {
            return None;
        }
        let (mut eio, mut transport, mut sid) = (None, None, None);
        for pair in req.uri().query().unwrap_or_default().split('&') {
            match pair.split_once('=') {
                Some(("EIO", v)) => eio = Some(v),
                Some(("transport", v)) => transport = Some(v),
                Some(("sid", v)) => sid = Some(v.to_string()),
                _ => {}
            }
        }
        if eio != Some("4") {
            return None; // refused by socketioxide
        }
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        match (req.method(), transport) {
            (&Method::GET, Some("websocket")) if upgrade => Some(EngineRequest::WebSocket { sid }),
            (&Method::POST, Some("polling")) => sid.map(|sid| EngineRequest::PollingPost { sid }),
            (&Method::GET, Some("polling")) if sid.is_none() => Some(EngineRequest::PollingOpen),
            _ => None,
        }
    }
}

/// The attachments one session still owes, whichever transport carries them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Attachments {
    /// Attachments announced and not yet received.
    pending: usize,
    /// When they must all have arrived (set while `pending > 0`).
    deadline: Option<Instant>,
}

impl Attachments {
    /// A complete Engine.IO packet from the client (a text one by its first bytes).
    fn observe(&mut self, message: Message<'_>, now: Instant) {
        match message {
            Message::Binary => {
                // Without a packet waiting for it, socketioxide closes the session itself.
                self.pending = self.pending.saturating_sub(1);
            }
            Message::Text(head) => match packet(head) {
                Packet::Control => return,
                Packet::Binary(n) => self.pending = n,
                // A packet of another kind while attachments are owed: socketioxide closes
                // the session; either way nothing is owed any more.
                Packet::Other => self.pending = 0,
            },
        }
        if self.pending == 0 {
            self.deadline = None;
        } else if matches!(message, Message::Text(_)) {
            self.deadline = Some(now + ATTACHMENT_DEADLINE);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// What an Engine.IO text packet is, for the guard.
#[derive(Debug, PartialEq, Eq)]
enum Packet {
    /// Not a message (ping, pong, close, upgrade, noop).
    Control,
    /// A Socket.IO binary event or ack announcing this many attachments.
    Binary(usize),
    /// Any other Socket.IO packet (or one socketioxide will refuse).
    Other,
}

/// `4` (Engine.IO message), then `5` or `6` (Socket.IO binary event or ack), the number of
/// attachments, `-`.
fn packet(head: &[u8]) -> Packet {
    match head {
        [b'4', b'5' | b'6', rest @ ..] => {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            match (rest.get(digits), std::str::from_utf8(&rest[..digits])) {
                (Some(b'-'), Ok(n)) if digits > 0 => n.parse().map_or(Packet::Other, Packet::Binary),
                _ => Packet::Other,
            }
        }
        [b'4', ..] => Packet::Other,
        _ => Packet::Control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_packets_are_told_by_their_first_bytes() {
        assert_eq!(packet(b"451-[\"say\",{\"_placeholder\":true"), Packet::Binary(1));
        assert_eq!(packet(b"4610-/admin,7[{\"_placeholder\""), Packet::Binary(10));
        assert_eq!(packet(b"42[\"say\",\"r\",\"hi\"]"), Packet::Other);
        assert_eq!(packet(b"40"), Packet::Other);
        assert_eq!(packet(b"45-[]"), Packet::Other, "no count");
        assert_eq!(packet(b"45x-[]"), Packet::Other);
        assert_eq!(packet(b"4599999999999999999999999-"), Packet::Other, "overflows");
        for control in [&b"2"[..], b"3", b"2probe", b"5", b"6", b"1", b""] {
            assert_eq!(packet(control), Packet::Control);
        }
    }

    #[test]
    fn owed_attachments_have_a_deadline_until_all_arrive() {
        let t0 = Instant::now();
        let mut a = Attachments::default();
        a.observe(Message::Text(b"42[\"say\"]"), t0);
        assert_eq!(a.deadline(), None);
        a.observe(Message::Text(b"452-[\"say\""), t0);
        assert_eq!(a.deadline(), Some(t0 + ATTACHMENT_DEADLINE));
        a.observe(Message::Text(b"3"), t0 + Duration::from_secs(1)); // a pong changes nothing
        a.observe(Message::Binary, t0 + Duration::from_secs(2));
        assert_eq!(a.deadline(), Some(t0 + ATTACHMENT_DEADLINE), "from the announcement on");
        a.observe(Message::Binary, t0 + Duration::from_secs(3));
        assert_eq!(a, Attachments::default());
        a.observe(Message::Text(b"450-[\"e\"]"), t0);
        assert_eq!(a.deadline(), None, "nothing announced, nothing owed");
        a.observe(Message::Text(b"461-0[{\"_placeholder\""), t0);
        a.observe(Message::Text(b"42[\"x\"]"), t0);
        assert_eq!(a.deadline(), None, "socketioxide drops the packet");
    }

    fn request(method: &str, uri: &str, upgrade: bool) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if upgrade {
            b = b.header("upgrade", "WebSocket");
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn the_guard_watches_engine_io_uploads_and_openings_only() {
        let of = |m, uri, up| EngineRequest::of(&request(m, uri, up));
        assert_eq!(
            of("GET", "/socket.io/?EIO=4&transport=websocket", true),
            Some(EngineRequest::WebSocket { sid: None })
        );
        assert_eq!(
            of("GET", "/socket.io/?EIO=4&transport=websocket&sid=abc", true),
            Some(EngineRequest::WebSocket {
                sid: Some("abc".into())
            })
        );
        assert_eq!(
            of("POST", "/socket.io/?EIO=4&transport=polling&t=x&sid=abc", false),
            Some(EngineRequest::PollingPost { sid: "abc".into() })
        );
        assert_eq!(
            of("GET", "/socket.io/?EIO=4&transport=polling&t=x", false),
            Some(EngineRequest::PollingOpen)
        );
        for (m, uri, up) in [
            ("GET", "/socket.io/?EIO=4&transport=websocket", false),
            ("GET", "/socket.io/?EIO=3&transport=websocket", true),
            ("GET", "/socket.io/?EIO=4&transport=polling&sid=abc", false),
            ("POST", "/socket.io/?EIO=4&transport=polling", false),
            ("POST", "/api/rooms/r/emit?EIO=4&transport=polling&sid=abc", false),
            ("GET", "/socket.iox/?EIO=4&transport=websocket", true),
        ] {
            assert_eq!(of(m, uri, up), None, "{m} {uri}");
        }
    }
}

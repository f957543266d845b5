//! What the tests of `sio` share: a server with Node's timings (the tests run on paused
//! time) whose hooks count what happens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BoxFuture, Closed, Config, Event, Hooks, Io, Socket};

/// Hooks that count what happens.
#[derive(Default)]
pub struct Recorder {
    pub connected: AtomicUsize,
    pub disconnected: AtomicUsize,
    pub overdue: AtomicUsize,
    pub events: Mutex<Vec<Event>>,
}

pub struct Recording(pub Arc<Recorder>);

impl Hooks for Recording {
    fn connecting(&self, _: Socket) -> BoxFuture {
        Box::pin(async {})
    }
    fn connected(&self, _: &Socket) {
        self.0.connected.fetch_add(1, Ordering::SeqCst);
    }
    fn event(&self, socket: Socket, event: Event) {
        if let Some(id) = event.ack {
            socket.ack(id, &serde_json::json!(["ok"]));
        }
        self.0.events.lock().unwrap().push(event);
    }
    fn disconnected(&self, _: &Socket, _: Closed) {
        self.0.disconnected.fetch_add(1, Ordering::SeqCst);
    }
    fn attachments_overdue(&self) {
        self.0.overdue.fetch_add(1, Ordering::SeqCst);
    }
}

/// The args of every event the hooks got, in order.
impl Recorder {
    pub fn args(&self) -> Vec<serde_json::Value> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .map(|e| serde_json::Value::Array(e.args.clone()))
            .collect()
    }
}

/// A session of `io` that is connected to `/` (as after its CONNECT).
pub fn connected(io: &Arc<Io>, transport: super::Transport) -> Arc<super::Session> {
    let session = Arc::new(super::Session::new(transport));
    io.register(&session);
    session.state().connected = true;
    io.sockets.write().unwrap().insert(session.id, Arc::clone(&session));
    session
}

/// A server with Node's timings and a 1,000-byte payload limit, and its hooks.
pub fn server() -> (Arc<Io>, Arc<Recorder>) {
    let io = Io::new(Config {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(45),
        upgrade_timeout: Duration::from_secs(10),
        max_payload: 1000,
        attachment_deadline: Duration::from_secs(10),
    });
    let recorder = Arc::new(Recorder::default());
    io.set_hooks(Arc::new(Recording(Arc::clone(&recorder))));
    (io, recorder)
}

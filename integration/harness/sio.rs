//! Real Socket.IO clients for tests: `integration/node/sio-driver.js` (socket.io-client 4.8)
//! in one Node process, driven line by line. Every socket has a name; everything the
//! sockets receive is recorded and can be waited for.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use super::worker::node_dir;

pub struct SioClients {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Json>,
    /// Every event received so far, in order.
    pub seen: Vec<Json>,
    acks: u64,
}

impl SioClients {
    pub fn start() -> SioClients {
        SioClients::start_with_env(&[])
    }

    /// With extra environment, e.g. `NODE_EXTRA_CA_CERTS` to trust the test CA over https.
    pub fn start_with_env(env: &[(&str, &str)]) -> SioClients {
        let mut child = Command::new("node")
            .arg(node_dir().join("sio-driver.js"))
            .envs(env.iter().copied())
            .current_dir(node_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node sio-driver.js (run `npm ci` in integration/node)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Json>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("sio-driver.js: {line}"),
                }
            }
        });
        SioClients {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            acks: 0,
        }
    }

    fn send(&mut self, cmd: Json) {
        writeln!(self.stdin, "{cmd}").expect("write to sio-driver.js");
        self.stdin.flush().expect("flush sio-driver.js");
    }

    /// Connect socket `name` to `url` over WebSocket; its Socket.IO id once connected.
    pub fn connect(&mut self, name: &str, url: &str) -> String {
        self.connect_with(name, url, &["websocket"])
    }

    pub fn connect_with(&mut self, name: &str, url: &str, transports: &[&str]) -> String {
        self.send(json!({ "op": "connect", "name": name, "url": url, "transports": transports }));
        let ev = self
            .wait_for(Duration::from_secs(10), |e| {
                e["name"] == name && (e["event"] == "connect" || e["event"] == "connect_error")
            })
            .unwrap_or_else(|| panic!("{name} did not connect to {url}"));
        assert_eq!(ev["event"], "connect", "{name}: {ev}");
        ev["id"].as_str().unwrap_or_default().to_string()
    }

    /// Emit without waiting.
    pub fn emit(&mut self, name: &str, event: &str, args: Json) {
        self.send(json!({ "op": "emit", "name": name, "event": event, "args": args }));
    }

    /// Emit and wait for the acknowledgement; its first argument.
    pub fn call(&mut self, name: &str, event: &str, args: Json) -> Json {
        self.acks += 1;
        let tag = format!("ack{}", self.acks);
        self.send(json!({ "op": "emit", "name": name, "event": event, "args": args, "ack": tag }));
        match self.wait_for(Duration::from_secs(10), |e| e["ack"] == tag.as_str()) {
            Some(ack) => ack["data"].clone(),
            None => {
                let history: Vec<&Json> = self.seen.iter().filter(|e| e["name"] == name).collect();
                panic!("no ack for {event} from {name}; what {name} saw: {history:?}")
            }
        }
    }

    pub fn join(&mut self, name: &str, room: &str) {
        let ack = self.call(name, "join", json!([room]));
        assert_eq!(ack["ok"], true, "{name} joining {room}: {ack}");
    }

    pub fn close(&mut self, name: &str) {
        self.send(json!({ "op": "close", "name": name }));
    }

    /// Read what arrived up to now without waiting.
    pub fn drain(&mut self) {
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v);
        }
    }

    /// Wait until an event matching `pred` arrives (or already has); it, or None on timeout.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Json) -> bool) -> Option<Json> {
        self.drain();
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return Some(e.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The arguments of every `event` socket `name` received so far.
    pub fn received(&mut self, name: &str, event: &str) -> Vec<Json> {
        self.drain();
        self.seen
            .iter()
            .filter(|e| e["name"] == name && e["event"] == event)
            .map(|e| e["args"].clone())
            .collect()
    }

    /// Wait until socket `name` received an `event` whose arguments satisfy `pred`.
    pub fn wait_event(&mut self, name: &str, event: &str, timeout: Duration, pred: impl Fn(&Json) -> bool) -> bool {
        self.wait_for(timeout, |e| {
            e["name"] == name && e["event"] == event && pred(&e["args"])
        })
        .is_some()
    }
}

impl Drop for SioClients {
    fn drop(&mut self) {
        super::node::ask_to_exit(&mut self.stdin, &mut self.child, Duration::from_secs(3));
    }
}

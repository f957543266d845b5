// Real socket.io-client sessions arriving over time, for the slow-start and
// new-session-cap tests: where each new session lands and when it got in.
//
//   node arrivals.js --url http://127.0.0.1:8080 --load 150 --addresses 200 \
//                    [--hold FILE --arrivals 200 --rate 50] [--transports websocket] \
//                    [--backoff default] --timeout 60000
//
// First `--load` clients connect at once (client i from its own loopback address, one of
// `--addresses`: 127.0.0.2, 127.0.0.3, …, 127.0.1.2, …; a
// cookie jar each, so every one is a new session placed by its address) and each asks
// `whoami`; then one line {"held":true,"perWorker":{..}} is printed. With `--hold FILE`,
// it waits for FILE to exist, then opens `--arrivals` more clients, `--rate` per second
// from that moment. Every session stays open to the end. Reconnection uses fast test
// delays (200 ms..1 s, 10 s to connect), or socket.io-client's own defaults with
// `--backoff default` (1 s ± 50 %, doubling to 5 s; 20 s to connect): what a real client
// does after a 503.
//
// The last line is a JSON report: per session {phase, i, opened and at: ms since its
// phase began when its Engine.IO handshake was answered and when it connected, worker},
// connect errors (with the HTTP status the transport saw), and disconnects. Exits 0; the
// test judges it.
"use strict";
const fs = require("fs");
const http = require("http");
const { io } = require("socket.io-client");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const load = Number(arg("load", "0"));
const arrivals = Number(arg("arrivals", "0"));
const rate = Number(arg("rate", "50"));
const addresses = Number(arg("addresses", "1"));
const timeout = Number(arg("timeout", "60000"));
const transports = arg("transports", "polling,websocket").split(",");
const defaultBackoff = arg("backoff", "test") === "default";
const hold = arg("hold");
const started = Date.now();

const report = {
  sessions: [],
  connectErrors: 0,
  errorStatuses: {},
  errors: [],
  disconnects: 0,
  reconnects: 0,
  phases: {},
};
const sockets = [];

function note(err) {
  if (report.errors.length < 20) report.errors.push(String(err && err.message ? err.message : err));
}

function left() {
  return Math.max(0, timeout - (Date.now() - started));
}

function until(check, ms) {
  return new Promise((resolve) => {
    const deadline = Date.now() + ms;
    const tick = () => (check() || Date.now() > deadline ? resolve(check()) : setTimeout(tick, 20));
    tick();
  });
}

// Client n's source address: 127.0.0.2 .. 127.0.0.251, then 127.0.1.2 .., all loopback.
function address(n) {
  return `127.0.${Math.floor(n / 250)}.${2 + (n % 250)}`;
}

function open(phase, i, since) {
  const localAddress = address(i % addresses);
  const options = {
    transports,
    withCredentials: true,
    agent: new http.Agent({ localAddress, keepAlive: true }),
    localAddress,
    forceNew: true,
  };
  if (!defaultBackoff) Object.assign(options, { reconnectionDelay: 200, reconnectionDelayMax: 1000, timeout: 10000 });
  const socket = io(url, options);
  const s = { phase, i, socket, opened: null, at: null, worker: null };
  // The Engine.IO handshake answered: the moment the edge admitted and placed it.
  socket.io.on("open", () => {
    if (s.opened === null) s.opened = Date.now() - since;
  });
  socket.on("connect", () => {
    if (s.at === null) s.at = Date.now() - since;
    else report.reconnects++;
    if (s.worker !== null) return;
    socket.timeout(10000).emit("whoami", (err, r) => {
      if (err) note(`whoami: ${err.message}`);
      else s.worker = r.id;
    });
  });
  socket.on("connect_error", (e) => {
    report.connectErrors++;
    // engine.io-client puts the HTTP status of a failed polling request in
    // `description`; a refused WebSocket says it in the message of its error event.
    const d = e.description;
    const text = typeof d === "number" ? String(d) : String((d && (d.message || (d.error && d.error.message))) || e.message);
    const m = text.match(/\b([1-5]\d\d)\b/);
    const status = m ? m[1] : text;
    report.errorStatuses[status] = (report.errorStatuses[status] || 0) + 1;
  });
  socket.on("disconnect", (reason, details) => {
    report.disconnects++;
    const transport = socket.io.engine && socket.io.engine.transport ? socket.io.engine.transport.name : "?";
    const why = details && (details.description || details.message);
    note(`disconnect ${phase} ${i} from ${s.worker} at ${Date.now() - started} ms on ${transport}: ${reason}${why ? ` (${why.message || why})` : ""}`);
  });
  sockets.push(s);
  return s;
}

const placed = (phase) => sockets.filter((s) => s.phase === phase && s.worker !== null).length;

function perWorker(phase) {
  const counts = {};
  for (const s of sockets) if (s.phase === phase && s.worker) counts[s.worker] = (counts[s.worker] || 0) + 1;
  return counts;
}

async function main() {
  const loadStart = Date.now();
  for (let i = 0; i < load; i++) open("load", i, loadStart);
  await until(() => placed("load") >= load, left());
  report.phases.loaded = Date.now() - started;
  process.stdout.write(JSON.stringify({ held: true, perWorker: perWorker("load") }) + "\n");

  if (hold) {
    await until(() => fs.existsSync(hold), left());
    const since = Date.now();
    report.phases.released = since - started;
    for (let k = 0; k < arrivals && left() > 0; k++) {
      const due = since + (k * 1000) / rate;
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      // Arrivals take addresses after the loaded clients', so their keys are new.
      open("arrival", load + k, since);
    }
    await until(() => placed("arrival") >= arrivals, left());
  }
  report.phases.done = Date.now() - started;
  for (const s of sockets) {
    report.sessions.push({ phase: s.phase, i: s.i, opened: s.opened, at: s.at, worker: s.worker });
    s.socket.off("disconnect");
    s.socket.close();
  }
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(0);
}

main().catch((e) => {
  note(e);
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(0);
});
setTimeout(() => {
  note("global timeout");
  for (const s of sockets) report.sessions.push({ phase: s.phase, i: s.i, opened: s.opened, at: s.at, worker: s.worker });
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(0);
}, timeout + 20000).unref();

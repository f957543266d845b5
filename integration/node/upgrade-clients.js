// upgrade-clients.js: many real socket.io-client sockets, driven in bulk by a test that
// upgrades edgepin underneath them. One JSON command per line on stdin, one JSON answer
// per command on stdout.
//
//   node upgrade-clients.js --url http://127.0.0.1:8080 --clients 1000 --addresses 50 \
//                           [--transports websocket] [--ca ca.crt]
//
//   {"op":"connect","timeout":60000,"count":N} -> opens N more sockets (default --clients)
//       and waits for every socket: {"op":"connect","connected":N,"workers":{"w1":n,...},"ms":..}
//   {"op":"round","timeout":10000}   -> every connected socket asks `whoami` (client to
//       server) and waits for the acknowledgement (server to client):
//       {"op":"round","asked":N,"ok":n,"failed":k,"moved":m,"workers":{...},"ms":..}
//       (`moved`: sockets answered by another worker than at connect)
//   {"op":"events"} -> {"op":"events","disconnects":[{"i","reason","code","at"}],
//                        "reconnects":n,"connectErrors":n,"errors":[...]}
//       (`at`: Unix milliseconds; `code`: the WebSocket close code, when there was one)
//   {"op":"close"}  -> closes every socket: {"op":"close","at":<Unix ms>}
//   {"op":"exit"}
//
// Each socket has its own source address 127.0.0.x (x = 2 + i % addresses), its own
// cookie jar (withCredentials), and reconnects within a second when cut.
"use strict";
const fs = require("fs");
const http = require("http");
const https = require("https");
const readline = require("readline");
const { io } = require("socket.io-client");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const ca = arg("ca") ? fs.readFileSync(arg("ca")) : undefined;
const clients = Number(arg("clients", "10"));
const addresses = Number(arg("addresses", "1"));
const transports = arg("transports", "polling,websocket").split(",");

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sockets = [];
const events = { disconnects: [], reconnects: 0, connectErrors: 0, errors: [] };
const note = (e) => { if (events.errors.length < 20) events.errors.push(String(e && e.message ? e.message : e)); };

function until(check, ms) {
  return new Promise((resolve) => {
    const deadline = Date.now() + ms;
    const tick = () => (check() || Date.now() > deadline ? resolve(check()) : setTimeout(tick, 20));
    tick();
  });
}

function whoami(s, ms) {
  return new Promise((resolve) => {
    if (!s.socket.connected) return resolve(null);
    s.socket.timeout(ms).emit("whoami", (err, r) => resolve(err ? null : r));
  });
}

async function connect(timeout, count) {
  const started = Date.now();
  const fresh = [];
  for (let i = sockets.length, end = sockets.length + count; i < end; i++) {
    const localAddress = `127.0.0.${2 + (i % addresses)}`;
    const agent = url.startsWith("https")
      ? new https.Agent({ localAddress, ca, keepAlive: true })
      : new http.Agent({ localAddress, keepAlive: true });
    const socket = io(url, {
      transports,
      withCredentials: true,
      agent,
      ca,
      localAddress,
      forceNew: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      timeout: 10000,
    });
    const s = { i, socket, worker: null };
    socket.on("disconnect", (reason, details) => {
      const ctx = details && details.context;
      const code = ctx && typeof ctx.code === "number" ? ctx.code : null;
      events.disconnects.push({ i, reason, code, at: Date.now() });
    });
    socket.io.on("reconnect", () => events.reconnects++);
    socket.on("connect_error", (e) => { events.connectErrors++; note(`connect_error: ${e.message}`); });
    sockets.push(s);
    fresh.push(s);
    // Arrive in small groups, like real clients.
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 20));
  }
  await until(() => sockets.every((s) => s.socket.connected), timeout);
  const workers = {};
  await Promise.all(fresh.map(async (s) => {
    const r = await whoami(s, 10000);
    if (r) { s.worker = r.id; workers[r.id] = (workers[r.id] || 0) + 1; }
  }));
  return { op: "connect", connected: sockets.filter((s) => s.socket.connected).length, workers, ms: Date.now() - started };
}

async function round(timeout) {
  const started = Date.now();
  const result = { op: "round", asked: 0, ok: 0, failed: 0, moved: 0, workers: {} };
  await Promise.all(sockets.map(async (s) => {
    if (!s.socket.connected) return;
    result.asked++;
    const r = await whoami(s, timeout);
    if (!r) { result.failed++; return; }
    result.ok++;
    result.workers[r.id] = (result.workers[r.id] || 0) + 1;
    if (s.worker && r.id !== s.worker) {
      result.moved++;
      if (!result.movedList) result.movedList = [];
      if (result.movedList.length < 10) {
        const jar = s.socket.io.engine && s.socket.io.engine._cookieJar;
        result.movedList.push({ i: s.i, from: s.worker, to: r.id, cookies: jar ? [...jar.cookies.keys()] : null });
      }
    }
  }));
  result.ms = Date.now() - started;
  return result;
}

async function handle(cmd) {
  switch (cmd.op) {
    case "connect": return out(await connect(cmd.timeout || 60000, cmd.count || clients));
    case "round": return out(await round(cmd.timeout || 10000));
    case "events": return out({ op: "events", ...events });
    case "close":
      for (const s of sockets) s.socket.close();
      return out({ op: "close", at: Date.now() });
    case "exit":
      for (const s of sockets) s.socket.close();
      process.exit(0);
      break;
    default:
      out({ op: cmd.op, error: "unknown op" });
  }
}

const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on("line", (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { return out({ error: `bad command: ${line}` }); }
  queue = queue.then(() => handle(cmd)).catch((e) => out({ op: cmd.op, error: String(e) }));
});
rl.on("close", () => { for (const s of sockets) s.socket.close(); process.exit(0); });

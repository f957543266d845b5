// Real socket.io-client sessions through edgepin, for the end-to-end tests.
//
//   node clients.js --url https://127.0.0.1:8443 --ca ca.crt --clients 500 --addresses 20 \
//                   --rooms 50 --rest 400 --timeout 60000
//
// Each client has its own cookie jar (withCredentials; `--cookies off`: none, like
// socket.io-client's default in Node) and a source address 127.0.0.x (x = 2 + i % addresses), uses the default transports (polling, then the upgrade to
// websocket), joins room `r<i % rooms>`, and asks `whoami`. Then one member per room
// says something and every member must receive it (and nothing from other rooms).
// Then `--rest` GET /api/whoami requests go over one keep-alive connection.
// Prints one JSON object with what happened and exits 0; the test judges it.
"use strict";
const fs = require("fs");
const https = require("https");
const http = require("http");
const { io } = require("socket.io-client");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const url = arg("url");
const ca = arg("ca") ? fs.readFileSync(arg("ca")) : undefined;
const clients = Number(arg("clients", "10"));
const addresses = Number(arg("addresses", "1"));
const rooms = Number(arg("rooms", "1"));
const restCount = Number(arg("rest", "0"));
const timeout = Number(arg("timeout", "60000"));
const transports = arg("transports", "polling,websocket").split(",");
const cookies = arg("cookies", "on") !== "off";
// With --hold FILE: after the first round, print a "held" line and wait for FILE to
// exist (the test kills a worker meanwhile), then wait until every client is connected
// and in its room again before the broadcast round.
const hold = arg("hold");
const started = Date.now();

const result = {
  clients,
  connected: 0,
  joined: 0,
  upgraded: 0,
  perWorker: {},
  transports: {},
  disconnects: 0,
  reconnects: 0,
  connectErrors: 0,
  errors: [],
  broadcasts: { expected: 0, received: 0, foreign: 0 },
  rest: { perWorker: {}, failed: 0 },
  phases: {},
};

function note(err) {
  if (result.errors.length < 20) result.errors.push(String(err && err.message ? err.message : err));
}

function until(check, ms) {
  return new Promise((resolve) => {
    const deadline = Date.now() + ms;
    const tick = () => (check() || Date.now() > deadline ? resolve(check()) : setTimeout(tick, 20));
    tick();
  });
}

function left() {
  return Math.max(0, timeout - (Date.now() - started));
}

function mark(phase) {
  result.phases[phase] = Date.now() - started;
}

async function main() {
  const sockets = [];
  for (let i = 0; i < clients; i++) {
    const localAddress = `127.0.0.${2 + (i % addresses)}`;
    const agent = url.startsWith("https")
      ? new https.Agent({ localAddress, ca, keepAlive: true })
      : new http.Agent({ localAddress, keepAlive: true });
    const socket = io(url, {
      transports,
      withCredentials: cookies,
      agent,
      ca,
      localAddress,
      forceNew: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      timeout: 10000,
    });
    const state = { socket, room: `r${i % rooms}`, joined: false, upgraded: false, worker: null, got: [] };
    socket.on("connect", () => {
      result.connected++;
      socket.emit("join", state.room, () => { state.joined = true; result.joined++; });
    });
    socket.io.on("reconnect", () => result.reconnects++);
    socket.on("disconnect", (reason) => { result.disconnects++; note(`disconnect: ${reason}`); });
    socket.on("connect_error", (e) => { result.connectErrors++; note(`connect_error: ${e.message}`); });
    socket.on("said", (m) => {
      if (m && m.room === state.room) state.got.push(m.msg);
      else result.broadcasts.foreign++;
    });
    socket.io.on("open", () => {
      const engine = socket.io.engine;
      if (engine.transport.name === "websocket") { state.upgraded = true; result.upgraded++; }
      engine.on("upgradeError", (e) => note(`upgradeError: ${e.message} ${e.transport || ""} ${e.description ? e.description.message || e.description : ""}`));
      engine.on("upgrade", (t) => { if (t.name === "websocket" && !state.upgraded) { state.upgraded = true; result.upgraded++; } });
    });
    sockets.push(state);
    // Spread the handshakes a little, like real clients arriving.
    if (i % 25 === 24) await new Promise((r) => setTimeout(r, 50));
  }
  await until(() => result.joined >= clients, left());
  mark("joined");
  await until(() => result.upgraded >= clients || !transports.includes("websocket"), left());
  mark("upgraded");
  result.notUpgraded = sockets.filter((s) => !s.upgraded).slice(0, 10).map((s) => (s.socket.io.engine ? s.socket.io.engine.id : null));

  // Which worker serves each session, and on which transport.
  await Promise.all(
    sockets.map(
      (s) =>
        new Promise((resolve) => {
          if (!s.socket.connected) return resolve();
          s.socket.timeout(5000).emit("whoami", (err, r) => {
            if (err) note(`whoami: ${err.message}`);
            else {
              s.worker = r.id;
              result.perWorker[r.id] = (result.perWorker[r.id] || 0) + 1;
              result.transports[r.transport] = (result.transports[r.transport] || 0) + 1;
            }
            resolve();
          });
        }),
    ),
  );
  mark("whoami");

  if (hold) {
    result.held = { perWorker: { ...result.perWorker } };
    process.stdout.write(JSON.stringify({ held: true, perWorker: result.perWorker }) + "\n");
    await until(() => fs.existsSync(hold), left());
    mark("released");
    for (const s of sockets) s.joined = false;
    const rejoined = () => sockets.every((s) => s.socket.connected && s.joined);
    // Clients that reconnect rejoin in their "connect" handler; the others rejoin here.
    for (const s of sockets) {
      if (s.socket.connected) s.socket.emit("join", s.room, () => { s.joined = true; });
    }
    await until(rejoined, left());
    result.rejoined = sockets.filter((s) => s.socket.connected && s.joined).length;
    mark("rejoined");
    result.perWorker = {};
    result.moved = 0;
    await Promise.all(sockets.map((s) => new Promise((resolve) => {
      if (!s.socket.connected) return resolve();
      s.socket.timeout(5000).emit("whoami", (err, r) => {
        if (!err) {
          result.perWorker[r.id] = (result.perWorker[r.id] || 0) + 1;
          if (r.id !== s.worker) result.moved++;
        }
        resolve();
      });
    })));
  }

  // One broadcast per room, from its first member; every member must get it.
  const members = {};
  for (const s of sockets) (members[s.room] = members[s.room] || []).push(s);
  for (const [room, list] of Object.entries(members)) {
    result.broadcasts.expected += list.length;
    list[0].socket.emit("say", room, `hello ${room}`);
  }
  const delivered = () => sockets.reduce((n, s) => n + s.got.filter((m) => m === `hello ${s.room}`).length, 0);
  await until(() => delivered() >= result.broadcasts.expected, Math.min(left(), 15000));
  result.broadcasts.received = delivered();
  mark("broadcast");

  // REST through the same edge, one keep-alive connection.
  if (restCount > 0) {
    const agent = url.startsWith("https") ? new https.Agent({ ca, keepAlive: true, maxSockets: 1 }) : new http.Agent({ keepAlive: true, maxSockets: 1 });
    const lib = url.startsWith("https") ? https : http;
    for (let i = 0; i < restCount && left() > 0; i++) {
      try {
        const id = await new Promise((resolve, reject) => {
          const req = lib.get(`${url}/api/whoami`, { agent, ca, timeout: 5000 }, (res) => {
            let body = "";
            res.on("data", (c) => (body += c));
            res.on("end", () => (res.statusCode === 200 ? resolve(JSON.parse(body).id) : reject(new Error(`status ${res.statusCode}`))));
          });
          req.on("timeout", () => req.destroy(new Error("timeout")));
          req.on("error", reject);
        });
        result.rest.perWorker[id] = (result.rest.perWorker[id] || 0) + 1;
      } catch (e) {
        result.rest.failed++;
        note(`rest: ${e.message}`);
      }
    }
    agent.destroy();
  }
  mark("rest");

  for (const s of sockets) {
    s.socket.off("disconnect");
    s.socket.close();
  }
  result.elapsedMs = Date.now() - started;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}

main().catch((e) => {
  note(e);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
});
setTimeout(() => {
  note("global timeout");
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(0);
}, timeout + 20000).unref();

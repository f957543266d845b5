// A Node.js Socket.IO worker with @socket.io/redis-adapter: what edgepin's users run
// today. Same events and REST API as `edgepin worker`, so tests can mix the two.
//
//   node worker.js --port 3001 --id n1 --redis redis://127.0.0.1:6379
//   node worker.js --port 3001 --id n1 --redis-cluster redis://127.0.0.1:7000,redis://…
//     (a Redis Cluster with the sharded adapter: sharded pub/sub, Redis >= 7, on ioredis
//     with `shardedSubscribers`, which moves shard subscriptions to a promoted replica;
//     node-redis 4.x keeps them on the dead master, so its rooms do not heal after a
//     failover without a restart)
//
// Socket.IO events on "/": join(room, ack), leave(room), say(room, msg) -> "said"
// {from, room, msg} to the room on every worker, whoami(ack) -> {id, transport},
// members(room, ack) -> {ok, room, members} across workers (rooms the socket is in).
// HTTP: GET /health, GET /api/whoami, POST /api/rooms/:room/emit {event, data},
// GET /api/rooms/:room -> {room, members} across workers.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter, createShardedAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const { Cluster } = require("ioredis");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg("port", "3001"));
const id = arg("id", `node-${port}`);
const redisUrl = arg("redis", "redis://127.0.0.1:6379");
const clusterSeeds = arg("redis-cluster", "");

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve) => {
    let data = "";
    req.on("data", (c) => { data += c; if (data.length > 1e6) req.destroy(); });
    req.on("end", () => resolve(data));
  });
}

async function main() {
  let pub, sub;
  if (clusterSeeds) {
    const seeds = clusterSeeds.split(",").map((url) => {
      const u = new URL(url);
      return { host: u.hostname, port: Number(u.port || 6379) };
    });
    pub = new Cluster(seeds, { lazyConnect: true });
    sub = new Cluster(seeds, { lazyConnect: true, shardedSubscribers: true });
  } else {
    pub = createClient({ url: redisUrl });
    sub = pub.duplicate();
  }
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`[${id}] redis: ${e.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  const ready = () => (clusterSeeds ? pub.status === "ready" : pub.isReady);

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname.startsWith("/socket.io/")) return; // engine.io handles it
    if (req.method === "GET" && url.pathname === "/health") return json(res, 200, { id, redis: ready() ? "up" : "down" });
    if (req.method === "GET" && url.pathname === "/api/whoami") return json(res, 200, { id });
    const m = url.pathname.match(/^\/api\/rooms\/([^/]+)(\/emit)?$/);
    if (m && req.method === "POST" && m[2]) {
      let body;
      try { body = JSON.parse(await readBody(req)); } catch { return json(res, 400, { error: "invalid JSON" }); }
      io.to(decodeURIComponent(m[1])).emit(body.event, body.data);
      return json(res, 200, { ok: true });
    }
    if (m && req.method === "GET" && !m[2]) {
      const room = decodeURIComponent(m[1]);
      try {
        const sockets = await io.in(room).fetchSockets();
        return json(res, 200, { room, members: sockets.length });
      } catch (e) {
        return json(res, 504, { room, error: String(e.message) });
      }
    }
    json(res, 404, { error: "not found" });
  });

  const adapter = clusterSeeds ? createShardedAdapter(pub, sub) : createAdapter(pub, sub);
  const io = new Server(server, { adapter });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => { socket.join(room); if (typeof ack === "function") ack({ ok: true, id }); });
    socket.on("leave", (room) => socket.leave(room));
    socket.on("say", (room, msg) => io.to(room).emit("said", { from: id, room, msg }));
    socket.on("whoami", (ack) => { if (typeof ack === "function") ack({ id, transport: socket.conn.transport.name }); });
    socket.on("members", async (room, ack) => {
      if (typeof ack !== "function") return;
      if (!socket.rooms.has(room)) return ack({ ok: false, error: "only the rooms this socket is in can be counted" });
      try {
        ack({ ok: true, room, members: (await io.in(room).fetchSockets()).length });
      } catch (e) {
        ack({ ok: false, error: String(e.message) });
      }
    });
  });

  server.listen(port, "127.0.0.1", () => console.log(`[${id}] listening on 127.0.0.1:${port}`));
  const stop = () => { io.close(); Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0)); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => { console.error(`[${id}] ${e.stack || e}`); process.exit(1); });

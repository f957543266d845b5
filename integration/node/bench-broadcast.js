// Cross-worker broadcast benchmark: N Socket.IO clients (socket.io-client 4.8, WebSocket)
// in R rooms spread over W workers on one Redis (or a Redis Cluster); a member of a room
// says something and the time from that emit to its delivery at every member of the room
// is measured.
//
//   node bench-broadcast.js --edgepin ../../target/release/edgepin [--kinds edgepin,node]
//        [--redis single,cluster] [--clients 1000] [--rooms 100] [--workers 4]
//        [--rate 100] [--seconds 15] [--bursts 10] [--idle] [--settle 1]
//        [--out ../../target/bench/broadcast.json]
//
// --redis cluster starts a Redis Cluster of 3 masters (no replicas) on loopback and runs
// the workers on it (edgepin --redis-cluster, Node with the sharded adapter).
// --clients takes a list (1000,10000): one run per count, in that order.
// --idle measures memory only: the clients connect and join, then say nothing for
// --settle seconds (5 unless given) before RSS is read; no broadcasts. Each process
// needs a file descriptor per client: raise `ulimit -n` for 10,000 (the Makefile does).
// Clients connect from 127.0.0.1 to 127.0.0.8 in turn, so tens of thousands of
// connections (and the TIME_WAITs of the run before) never run out of ephemeral ports.
//
// Phases, per kind of worker (edgepin, and the Node.js reference worker for comparison)
// and per Redis:
//   steady: one broadcast every 1/rate s, rooms in turn, for --seconds;
//   burst:  every room at once, --bursts times, 1 s apart.
// Room r's members are clients r, r+R, r+2R, …, client i on worker floor(i/R) mod W, so
// every room spans the workers. Worker RSS is read from /proc before the clients connect
// and once they have all joined. Everything runs on this machine: the client process
// shares the CPU with the workers and Redis, so latencies include its own delays.
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const path = require("path");
const { io } = require("socket.io-client");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const opts = {
  edgepin: arg("edgepin", path.join(__dirname, "../../target/release/edgepin")),
  kinds: arg("kinds", "edgepin,node").split(","),
  redis: arg("redis", "single").split(","),
  clients: arg("clients", "1000").split(",").map(Number),
  rooms: Number(arg("rooms", "100")),
  workers: Number(arg("workers", "4")),
  rate: Number(arg("rate", "100")),
  seconds: Number(arg("seconds", "15")),
  bursts: Number(arg("bursts", "10")),
  idle: process.argv.includes("--idle"),
  out: arg("out", path.join(__dirname, "../../target/bench/broadcast.json")),
};
opts.settle = Number(arg("settle", opts.idle ? "5" : "1"));
const HARD_LIMIT_MS = 240_000 * opts.kinds.length * opts.redis.length * opts.clients.length;
// Each client is a descriptor in this process (and one in its worker, which inherits the
// limit): say so now rather than fail halfway through.
const maxClients = Math.max(...opts.clients);
const fdLimit = Number((fs.readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/) || [])[1]);
if (fdLimit && fdLimit < maxClients + 200) {
  console.error(`bench: ${maxClients} clients need more descriptors than \`ulimit -n\` (${fdLimit}) allows; raise it`);
  process.exit(2);
}
if (opts.clients.some((n) => !(n > 0) || n % opts.rooms !== 0)) {
  console.error("--clients must be a multiple of --rooms (every room has the same members)");
  process.exit(2);
}

const children = [];
const killAll = () => { for (const c of children) { try { c.kill("SIGKILL"); } catch (_) {} } };
process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { killAll(); process.exit(130); });
setTimeout(() => { console.error(`bench: gave up after ${HARD_LIMIT_MS / 1000} s`); process.exit(2); }, HARD_LIMIT_MS).unref();

const progress = (msg) => process.stderr.write(`bench-broadcast: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => process.hrtime.bigint();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
    s.on("error", reject);
  });
}

function start(cmd, args) {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let tail = "";
  child.stderr.on("data", (d) => { tail = (tail + d).slice(-2000); });
  child.tail = () => tail;
  children.push(child);
  return child;
}

async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const healthy = (port) => new Promise((resolve) => {
  const req = require("http").get({ host: "127.0.0.1", port, path: "/health", timeout: 1000 }, (res) => {
    res.resume();
    resolve(res.statusCode === 200);
  });
  req.on("error", () => resolve(false));
  req.on("timeout", () => { req.destroy(); resolve(false); });
});

function rssKb(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) : NaN;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(latenciesMs, expected) {
  const s = Float64Array.from(latenciesMs).sort();
  return {
    deliveries: s.length,
    expected,
    lost: expected - s.length,
    p50_ms: +percentile(s, 50).toFixed(2),
    p99_ms: +percentile(s, 99).toFixed(2),
    max_ms: +(s.length ? s[s.length - 1] : NaN).toFixed(2),
  };
}

const listening = (port) => new Promise((r) => {
  const s = net.connect(port, "127.0.0.1", () => { s.destroy(); r(true); });
  s.on("error", () => r(false));
});

const redisArgs = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

// One redis-server, or a cluster of 3 masters; the workers' arguments to reach it.
async function startRedis(mode) {
  if (mode === "single") {
    const port = await freePort();
    const server = start("redis-server", ["--port", String(port), ...redisArgs]);
    await waitFor(() => listening(port), 10_000, "redis-server");
    return { servers: [server], args: ["--redis", `redis://127.0.0.1:${port}`] };
  }
  const servers = [];
  const ports = [];
  for (let i = 0; i < 3; i++) {
    const [port, bus] = [await freePort(), await freePort()];
    const dir = fs.mkdtempSync(path.join(require("os").tmpdir(), "bench-cluster-"));
    servers.push(start("redis-server", ["--port", String(port), ...redisArgs, "--cluster-enabled", "yes",
      "--cluster-port", String(bus), "--dir", dir]));
    ports.push(port);
  }
  for (const port of ports) await waitFor(() => listening(port), 10_000, `redis-server ${port}`);
  const create = require("child_process").spawnSync("redis-cli", ["--cluster", "create",
    ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"]);
  if (create.status !== 0) throw new Error(`redis-cli --cluster create: ${create.stdout}${create.stderr}`);
  const ok = (port) => require("child_process")
    .spawnSync("redis-cli", ["-p", String(port), "cluster", "info"]).stdout.toString().includes("cluster_state:ok");
  await waitFor(async () => ports.every(ok), 20_000, "the cluster");
  return { servers, args: ["--redis-cluster", ports.map((p) => `redis://127.0.0.1:${p}`).join(",")] };
}

async function runKind(kind, mode, clientCount) {
  const redis = await startRedis(mode);

  const workers = [];
  for (let w = 0; w < opts.workers; w++) {
    const port = await freePort();
    const id = `${kind}${w + 1}`;
    const child = kind === "edgepin"
      ? start(opts.edgepin, ["worker", "--listen", `127.0.0.1:${port}`, "--id", id, ...redis.args])
      : start("node", [path.join(__dirname, "worker.js"), "--port", String(port), "--id", id, ...redis.args]);
    workers.push({ id, port, child });
  }
  for (const w of workers) await waitFor(() => healthy(w.port), 20_000, `worker ${w.id}`);
  await sleep(500);
  const idleRss = workers.map((w) => rssKb(w.child.pid));
  progress(`${kind} (${mode} Redis): ${opts.workers} workers up`);

  // Connect and join, 50 at a time.
  const clients = new Array(clientCount);
  const roomOf = (i) => `room-${i % opts.rooms}`;
  const pending = new Map(); // seq -> { sent, remaining }
  const steady = [];
  const burst = [];
  let phase = steady;
  for (let base = 0; base < clientCount; base += 50) {
    await Promise.all(Array.from({ length: Math.min(50, clientCount - base) }, (_, k) => {
      const i = base + k;
      const w = workers[Math.floor(i / opts.rooms) % opts.workers];
      const socket = io(`http://127.0.0.1:${w.port}`, {
        transports: ["websocket"], forceNew: true, localAddress: `127.0.0.${1 + (i % 8)}`,
      });
      clients[i] = socket;
      socket.on("said", (m) => {
        const at = now();
        const p = pending.get(m.msg.seq);
        if (!p) return;
        phase.push(Number(at - BigInt(m.msg.t)) / 1e6);
        if (--p.remaining === 0) pending.delete(m.msg.seq);
      });
      return new Promise((resolve, reject) => {
        const late = setTimeout(() => reject(new Error(`client ${i} on ${w.id} not joined after 15 s (connected: ${socket.connected})`)), 15_000);
        socket.once("connect_error", (e) => { clearTimeout(late); reject(e); });
        socket.once("connect", () => socket.emit("join", roomOf(i), (ack) => {
          clearTimeout(late);
          return ack && ack.ok ? resolve() : reject(new Error("join refused"));
        }));
      });
    }));
  }
  progress(`${kind}: ${clientCount} clients joined`);
  await sleep(opts.settle * 1000);
  const loadedRss = workers.map((w) => rssKb(w.child.pid));
  const members = Math.ceil(clientCount / opts.rooms);

  // The sender takes turns among the room's members, so broadcasts start on every worker.
  let seq = 0;
  const say = (room) => {
    const s = ++seq;
    pending.set(s, { remaining: members });
    const sender = Math.min(room + opts.rooms * (s % members), clientCount - 1);
    clients[sender].emit("say", roomOf(room), { seq: s, t: String(now()) });
  };

  let steadyStats = null;
  let burstStats = null;
  if (!opts.idle) {
    // Steady: one broadcast every 1/rate s, on a fixed schedule.
    const steadyCount = Math.round(opts.rate * opts.seconds);
    const startNs = now();
    for (let k = 0; k < steadyCount; k++) {
      const due = startNs + BigInt(Math.round((k * 1e9) / opts.rate));
      while (now() < due) await sleep(Math.max(0, Number(due - now()) / 1e6 - 0.5));
      say(k % opts.rooms);
    }
    await waitFor(async () => pending.size === 0, 5000, "steady deliveries").catch(() => {});
    steadyStats = { rate_per_s: opts.rate, seconds: opts.seconds, ...summary(steady, steadyCount * members) };
    progress(`${kind}: steady phase done`);
    pending.clear();

    // Bursts: every room at once.
    phase = burst;
    for (let b = 0; b < opts.bursts; b++) {
      for (let r = 0; r < opts.rooms; r++) say(r);
      await sleep(1000);
    }
    await waitFor(async () => pending.size === 0, 5000, "burst deliveries").catch(() => {});
    burstStats = {
      bursts: opts.bursts, broadcasts_per_burst: opts.rooms,
      ...summary(burst, opts.bursts * opts.rooms * members),
    };
  }

  for (const c of clients) c.close();
  for (const w of workers) w.child.kill("SIGTERM");
  await sleep(300);
  for (const server of redis.servers) server.kill("SIGTERM");
  await sleep(opts.idle ? 2000 : 0); // the closed connections leave the workers before the next run

  const rssDeltaKb = loadedRss.reduce((a, b) => a + b, 0) - idleRss.reduce((a, b) => a + b, 0);
  return {
    kind,
    redis: mode,
    workers: opts.workers,
    clients: clientCount,
    rooms: opts.rooms,
    members_per_room: members,
    idle: opts.idle,
    settle_s: opts.settle,
    steady: steadyStats,
    burst: burstStats,
    rss_idle_kb: idleRss,
    rss_loaded_kb: loadedRss,
    rss_per_client_kb: +(rssDeltaKb / clientCount).toFixed(1),
  };
}

(async () => {
  const results = [];
  for (const clientCount of opts.clients) {
    for (const mode of opts.redis) {
      for (const kind of opts.kinds) {
        progress(`${kind} workers, ${mode} Redis, ${clientCount} clients${opts.idle ? " (idle)" : ""}…`);
        results.push(await runKind(kind, mode, clientCount));
      }
    }
  }
  const row = (cols) => cols.map((c, i) => String(c).padEnd(i === 0 ? 9 : 13)).join("");
  const ms = (x) => (x ? `${x} ms` : "-");
  const what = opts.idle ? "idle clients (connected, in a room, silent)" : "cross-worker broadcast";
  console.log(`\n${what}: ${opts.clients.join(" / ")} clients, ${opts.rooms} rooms, ${opts.workers} workers`);
  console.log(row(["workers", "Redis", "clients", "steady p50", "steady p99", "burst p50", "burst p99", "lost", "RSS/client", "idle RSS"]));
  for (const r of results) {
    console.log(row([
      r.kind,
      r.redis === "cluster" ? "3 masters" : "one",
      r.clients,
      ms(r.steady?.p50_ms), ms(r.steady?.p99_ms),
      ms(r.burst?.p50_ms), ms(r.burst?.p99_ms),
      r.steady ? r.steady.lost + r.burst.lost : "-",
      `${r.rss_per_client_kb} KB`,
      `${(r.rss_idle_kb.reduce((a, b) => a + b, 0) / r.workers / 1024).toFixed(1)} MB`,
    ]));
  }
  const byKind = (kind, n) => results.find((r) => r.kind === kind && r.clients === n && r.redis === opts.redis[0]);
  for (const n of opts.clients) {
    const [e, node] = [byKind("edgepin", n), byKind("node", n)];
    if (e && node) console.log(`RSS per client, edgepin ÷ Node at ${n} clients: ${(e.rss_per_client_kb / node.rss_per_client_kb).toFixed(2)}`);
  }
  if (opts.idle) {
    console.log(`idle: RSS read ${opts.settle} s after the last join, growth over the workers' RSS before the first client`);
  } else {
    console.log(`steady: one broadcast every ${1000 / opts.rate} ms for ${opts.seconds} s; burst: all ${opts.rooms} rooms at once, ${opts.bursts} times`);
  }
  fs.mkdirSync(path.dirname(opts.out), { recursive: true });
  fs.writeFileSync(opts.out, JSON.stringify({ date: new Date().toISOString(), options: opts, results }, null, 2) + "\n");
  console.log(`written ${path.relative(process.cwd(), opts.out)}`);
  process.exit(0);
})().catch((e) => {
  console.error(`bench-broadcast failed: ${e.stack || e}`);
  for (const c of children) if (c.tail) console.error(c.tail());
  process.exit(1);
});

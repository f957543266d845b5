// A Node.js server with @socket.io/redis-adapter (no HTTP listener) that broadcasts one
// event to a room and waits for every member's acknowledgement, on any worker:
//
//   node emit-with-ack.js --redis redis://127.0.0.1:6379 --room r1 --event poll --timeout 2000
//
// Prints {"error": null | "...", "acks": [...]} and exits.
"use strict";
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

(async () => {
  const pub = createClient({ url: arg("redis", "redis://127.0.0.1:6379") });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server({ adapter: createAdapter(pub, sub) });
  // Let the subscriptions settle, so the servers count this one.
  await new Promise((r) => setTimeout(r, 300));
  io.to(arg("room", "r1"))
    .timeout(Number(arg("timeout", "2000")))
    .emit(arg("event", "poll"), { question: "still there?" }, (err, acks) => {
      console.log(JSON.stringify({ error: err ? String(err.message) : null, acks }));
      Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    });
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});

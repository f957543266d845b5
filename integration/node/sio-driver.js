// sio-driver.js: real socket.io-client sockets driven by a test: one JSON command per line on stdin, one
// JSON event per line on stdout. Every socket has a name chosen by the test.
//
//   {"op":"connect","name":"a","url":"http://127.0.0.1:3001","transports":["websocket"]}
//     -> {"name":"a","event":"connect","id":"<sid>"}   (or "connect_error" with "error")
//   {"op":"emit","name":"a","event":"join","args":["r1"],"ack":"t1"}
//     -> {"name":"a","ack":"t1","data":<first ack argument>}   (when "ack" is given)
//   {"op":"close","name":"a"}    {"op":"exit"}
//
// Every event a socket receives is printed: {"name":"a","event":"said","args":[...]}, and
// so is each disconnect: {"name":"a","event":"disconnect","reason":"..."}. An event that
// asks for an acknowledgement is answered with {"from": name}.
"use strict";
const readline = require("readline");
const { io } = require("socket.io-client");

const sockets = new Map();
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function handle(cmd) {
  const s = sockets.get(cmd.name);
  switch (cmd.op) {
    case "connect": {
      const socket = io(cmd.url, {
        transports: cmd.transports || ["websocket"],
        reconnection: cmd.reconnection !== false,
        // As clients.js: a failed attempt (e.g. while every worker restarts) costs at most
        // a second, not socket.io's default 5 s, so waits in the tests stay short.
        reconnectionDelay: 200,
        reconnectionDelayMax: 1000,
        forceNew: true,
      });
      sockets.set(cmd.name, socket);
      socket.on("connect", () => out({ name: cmd.name, event: "connect", id: socket.id }));
      socket.on("connect_error", (e) => out({ name: cmd.name, event: "connect_error", error: String(e.message) }));
      socket.on("disconnect", (reason) => out({ name: cmd.name, event: "disconnect", reason }));
      socket.onAny((event, ...args) => {
        // An event that wants an acknowledgement gets {from: name}.
        if (typeof args[args.length - 1] === "function") args.pop()({ from: cmd.name });
        out({ name: cmd.name, event, args });
      });
      break;
    }
    case "emit":
      if (!s) return out({ name: cmd.name, error: "no such socket" });
      if (cmd.ack !== undefined) {
        s.emit(cmd.event, ...(cmd.args || []), (data) => out({ name: cmd.name, ack: cmd.ack, data }));
      } else {
        s.emit(cmd.event, ...(cmd.args || []));
      }
      break;
    case "close":
      if (s) s.close();
      sockets.delete(cmd.name);
      break;
    case "exit":
      for (const socket of sockets.values()) socket.close();
      process.exit(0);
      break;
    default:
      out({ error: `unknown op ${cmd.op}` });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (e) {
    out({ error: String(e) });
  }
});
// The test went away: do not outlive it.
rl.on("close", () => process.exit(0));

// The PeerJS signaling server (npm `peer`), the baseline of `cargo xtask bench signaling`.
// Limits raised so that it is measured, not its defaults: 100k concurrent clients, 10 min alive timeout.
const { PeerServer } = require("peer");
const port = Number(process.argv[2] || 9000);
PeerServer(
  { port, host: "127.0.0.1", path: "/", concurrent_limit: 100000, alive_timeout: 600000 },
  () => console.log(`ready ${process.pid}`),
);

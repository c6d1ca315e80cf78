/**
 * What a test pod runs: HTTP on --http (answers its --name, and the peer address on /whoami) and a
 * UDP responder on --udp (answers `<name> <peer>`). Prints "ready" once both are listening.
 */
const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ""), process.argv[i + 1] ?? "");
const name = args.get("name") ?? "pod";
const httpPort = Number(args.get("http") ?? 8080);
const udpPort = Number(args.get("udp") ?? 5353);

Bun.serve({
  hostname: "::",
  port: httpPort,
  fetch(req, server) {
    const peer = server.requestIP(req)?.address ?? "?";
    const path = new URL(req.url).pathname;
    return new Response(path === "/whoami" ? `${name} ${peer}` : name);
  },
});

await Bun.udpSocket({
  hostname: "::",
  port: udpPort,
  socket: {
    data(socket, _data, port, address) {
      socket.send(`${name} ${address}`, port, address);
    },
  },
});

process.stdout.write("ready\n");

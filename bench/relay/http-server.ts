/**
 * The HTTP server every path of the relay benchmark talks to: a fixed small response, keep-alive as the
 * client asks. Prints `{"port":N}` on stdout once listening.
 */
const body = "kproxy relay benchmark\n";
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  // Idle connections of the memory probe must outlive its measurement.
  idleTimeout: 120,
  // Say "Connection: close" when asked to, as a real server would: without it wrk takes the connection
  // for kept alive, sends its next request into it and counts a read error for every request.
  fetch: (req) => (req.headers.get("connection")?.toLowerCase() === "close" ? new Response(body, { headers: { connection: "close" } }) : new Response(body)),
});
process.stdout.write(JSON.stringify({ port: server.port }) + "\n");
process.on("SIGTERM", () => {
  server.stop(true);
  process.exit(0);
});

/**
 * Entry point of one relay thread. It keeps its own copy of the balancing state (the owner sends every
 * endpoint change to all threads) and its own TCP listeners: either one listening socket that every
 * thread accepts on (epoll relay; the kernel wakes one idle thread per connection) or one per thread
 * sharing the port through SO_REUSEPORT (the kernel spreads connections by hash).
 */
import { LoadBalancer } from "./load-balancer.ts";
import { STAT_SLOTS } from "./proxy-socket.ts";
import { epollRelayAvailable, startEpollTcpRelay, wakeFdOfThisThread, wakeMessageSeen } from "./epoll-tcp-relay.ts";
import { startTcpRelay } from "./tcp-relay.ts";
import type { TcpRelay } from "./tcp-relay.ts";
import type { WorkerReply, WorkerRequest } from "./relay-protocol.ts";

declare const self: Worker;

const balancer = new LoadBalancer();
const relays = new Map<string, TcpRelay>();


function reply(message: WorkerReply): void {
  self.postMessage(message);
}

self.onmessage = async (event: MessageEvent<WorkerRequest>) => {
  const m = event.data;
  if (m.woke) wakeMessageSeen();
  switch (m.op) {
    case "update":
      balancer.update(m.serviceKey, m.endpoints, m.affinity);
      return;
    case "remove":
      balancer.remove(m.serviceKey);
      return;
    case "sweepAffinity":
      balancer.cleanupStaleAffinity();
      return;
    case "affinityRecords":
      reply({ id: m.id, count: balancer.affinityRecords() });
      return;
    case "listen":
      try {
        relays.get(m.serviceKey)?.close({ closeActive: true });
        const options = {
          serviceKey: m.serviceKey,
          host: m.host,
          port: m.port,
          chooser: balancer,
          reusePort: m.reusePort,
          dialTimeoutsMs: m.dialTimeoutsMs,
          counters: new Float64Array(m.counters, m.slot * STAT_SLOTS * 8, STAT_SLOTS),
        };
        // This thread does nothing but relay, so the epoll relay may block in its wait; Bun's sockets
        // where it cannot run.
        const epoll = m.engine === "epoll" && epollRelayAvailable();
        if (m.joinFd !== undefined && !epoll) throw new Error("cannot join a shared listener without the epoll relay");
        const shared = {
          ...(m.joinFd !== undefined ? { joinFd: m.joinFd } : {}),
          shared: m.share ?? false,
          ...(m.rebalancing ? { rebalancing: { ...m.rebalancing, slot: m.slot, portCounters: new Float64Array(m.counters) } } : {}),
        };
        const epollRelay = epoll ? startEpollTcpRelay({ ...options, ...shared }) : undefined;
        const relay = epollRelay ?? startTcpRelay(options);
        relays.set(m.serviceKey, relay);
        const wakeFd = epollRelay ? wakeFdOfThisThread() : undefined;
        reply({ id: m.id, port: relay.port, ...(epollRelay && m.share ? { fd: epollRelay.listenerFd } : {}), ...(wakeFd !== undefined ? { wakeFd } : {}) });
      } catch (err) {
        reply({ id: m.id, error: err instanceof Error ? err.message : String(err) });
      }
      return;
    case "closeAll": {
      const all = [...relays.values()];
      relays.clear();
      await Promise.all(all.map((r) => r.close({ closeActive: true })));
      reply({ id: m.id });
      return;
    }
    case "close": {
      const relay = relays.get(m.serviceKey);
      relays.delete(m.serviceKey);
      await relay?.close({ closeActive: m.closeActive });
      reply({ id: m.id });
      return;
    }
  }
};

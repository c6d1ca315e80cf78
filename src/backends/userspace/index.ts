export { DEFAULT_AFFINITY_TIMEOUT_SECONDS, LoadBalancer } from "./load-balancer.ts";
export type { EndpointChooser, LoadBalancerOptions } from "./load-balancer.ts";
export { clientIPOf, ENDPOINT_DIAL_TIMEOUTS_MS, joinHostPort, splitHostPort } from "./proxy-socket.ts";
export type { CloseOptions, ProxySocket, RelayProtocol, RelayStats } from "./proxy-socket.ts";
export { startTcpRelay } from "./tcp-relay.ts";
export type { TcpRelay, TcpRelayOptions } from "./tcp-relay.ts";
export { DEFAULT_UDP_IDLE_TIMEOUT_MS, startUdpRelay } from "./udp-relay.ts";
export type { UdpRelay, UdpRelayOptions } from "./udp-relay.ts";

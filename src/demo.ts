/**
 * The built-in demo: services kproxy serves with `--demo`, so a first run needs no cluster, no
 * manifest and no root. Same format as a --services-file manifest.
 */
export const DEMO_MANIFEST = `
apiVersion: v1
kind: Service
metadata: { namespace: demo, name: web }
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  clusterIPs: [10.96.0.80]
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-abc12
  labels: { kubernetes.io/service-name: web }
addressType: IPv4
ports:
  - { name: http, port: 8080, protocol: TCP }
endpoints:
  - { addresses: [10.244.1.10], conditions: { ready: true }, nodeName: demo-node }
  - { addresses: [10.244.1.11], conditions: { ready: true }, nodeName: demo-node }
---
apiVersion: v1
kind: Service
metadata: { namespace: demo, name: dns }
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
    - { name: dns, port: 53, targetPort: 53, protocol: UDP }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: dns-xyz98
  labels: { kubernetes.io/service-name: dns }
addressType: IPv4
ports:
  - { name: dns, port: 53, protocol: UDP }
endpoints:
  - { addresses: [10.244.1.20], conditions: { ready: true }, nodeName: demo-node }
`;

export const DEMO_NODE_NAME = "demo-node";

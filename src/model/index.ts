export type * from "./types.ts";
export { parseService, parseEndpointSlice, parseNode, objectId, LIMITS, SERVICE_NAME_LABEL } from "./objects.ts";
export type { ParseResult, ServiceObject, EndpointSliceObject, NodeObject } from "./objects.ts";
export { servicePortsOf, servicePortKey, sameServicePort, DEFAULT_CLIENT_IP_TIMEOUT_SECONDS, SOURCE_RANGES_ANNOTATION } from "./service.ts";
export { mergeSlices, sliceInfoOf, sameEndpoints, endpointString, parseTriggerTime, TRIGGER_TIME_ANNOTATION } from "./endpoints.ts";
export type { SliceInfo, SlicePort } from "./endpoints.ts";
export {
  categorizeEndpoints,
  topologyModeFromHints,
  externallyAccessible,
  usesClusterEndpoints,
  usesLocalEndpoints,
} from "./topology.ts";
export type { CategorizedEndpoints, TopologyOptions, TopologyMode } from "./topology.ts";
export { ProxyModel } from "./tracker.ts";
export type { ProxyModelOptions, ModelCounts } from "./tracker.ts";
export { nodeInfoOf, unknownNode, ZONE_LABEL } from "./node.ts";
export { ipFamilyOf, canonicalIP, cidrFamilyOf } from "./ip.ts";

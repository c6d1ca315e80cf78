export type * from "./types.ts";
export { ApiSource } from "./api.ts";
export type { ApiSourceOptions } from "./api.ts";
export { ManifestSource, parseManifest, diffManifests, realManifestFiles } from "./manifest.ts";
export type { ManifestFiles, ManifestSourceOptions } from "./manifest.ts";

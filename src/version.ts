/** Baked in by build.ts through `define`; running from source reports the package version. */
declare const KPROXY_VERSION: string | undefined;
declare const KPROXY_TARGET: string | undefined;

export const version: string = typeof KPROXY_VERSION === "string" ? KPROXY_VERSION : "0.1.0-dev";
export const buildTarget: string = typeof KPROXY_TARGET === "string" ? KPROXY_TARGET : `bun-${process.platform}-${process.arch} (source)`;

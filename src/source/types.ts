/**
 * A source delivers API objects (from the API server or a manifest file) as events. Objects are
 * untrusted JSON here; the model validates each one and skips a bad one with a warning.
 */
export type ObjectKind = "Service" | "EndpointSlice" | "Node";

export type SourceEvent =
  | { readonly type: "upsert"; readonly kind: ObjectKind; readonly object: unknown }
  | { readonly type: "delete"; readonly kind: ObjectKind; readonly object: unknown }
  /** The initial list of every kind this source serves is in. */
  | { readonly type: "synced" };

export interface Source {
  /** Starts delivering events; resolves once stopped. */
  start(onEvent: (event: SourceEvent) => void, signal: AbortSignal): Promise<void>;
}

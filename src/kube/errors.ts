/**
 * Failures talking to the API server, split the way callers act on them: the server answered with an
 * error (ApiError: status + Status reason, e.g. 410 Expired → re-list), or it could not be reached or
 * the connection broke (NetworkError → back off and retry).
 */
import { z } from "zod";

export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    /** HTTP status, or the Status code of an ERROR watch event. */
    readonly status: number,
    /** The Status reason (`Expired`, `Gone`, `Forbidden`, ...), or "Unknown". */
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }

  /** The resourceVersion asked for is older than the server keeps (compaction). */
  get gone(): boolean {
    return this.status === 410 || this.reason === "Expired" || this.reason === "Gone";
  }

  /** Worth retrying after a pause: server trouble or throttling, not a refusal. */
  get retriable(): boolean {
    return this.status >= 500 || this.status === 429 || this.status === 0;
  }
}

export class NetworkError extends Error {
  override readonly name = "NetworkError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

const statusSchema = z.object({
  kind: z.literal("Status").optional(),
  message: z.string().optional(),
  reason: z.string().optional(),
  code: z.number().optional(),
});

/** Builds an ApiError from a Status object (a response body or an ERROR watch event's object). */
export function apiErrorFromStatus(httpStatus: number, body: unknown, fallback: string): ApiError {
  const parsed = statusSchema.safeParse(body);
  if (parsed.success && (parsed.data.reason !== undefined || parsed.data.message !== undefined || parsed.data.code !== undefined)) {
    const status = parsed.data.code ?? httpStatus;
    return new ApiError(status, parsed.data.reason ?? "Unknown", parsed.data.message ?? fallback);
  }
  return new ApiError(httpStatus, "Unknown", fallback);
}

export function isAbortError(err: unknown): boolean {
  return typeof err === "object" && err !== null && "name" in err && err.name === "AbortError";
}

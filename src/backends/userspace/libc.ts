/**
 * The few libc socket calls the epoll relay makes, bound through bun:ffi. Linux only (constants and
 * struct layouts below are Linux's, the same on x86-64 and arm64 except `epoll_event`); `openLibc`
 * answers undefined elsewhere or when libc cannot be loaded, and the caller keeps Bun's sockets.
 */
import { dlopen, FFIType, ptr, read } from "bun:ffi";
import type { Pointer } from "bun:ffi";
import { formatIP, parseIP } from "../../config/net.ts";

const T = FFIType;

const SYMBOLS = {
  socket: { args: [T.i32, T.i32, T.i32], returns: T.i32 },
  bind: { args: [T.i32, T.ptr, T.u32], returns: T.i32 },
  listen: { args: [T.i32, T.i32], returns: T.i32 },
  accept4: { args: [T.i32, T.ptr, T.ptr, T.i32], returns: T.i32 },
  connect: { args: [T.i32, T.ptr, T.u32], returns: T.i32 },
  getsockname: { args: [T.i32, T.ptr, T.ptr], returns: T.i32 },
  setsockopt: { args: [T.i32, T.i32, T.i32, T.ptr, T.u32], returns: T.i32 },
  // ssize_t results are at most the buffer size or -1, so the low 32 bits carry them whole.
  recv: { args: [T.i32, T.ptr, T.u64, T.i32], returns: T.i32 },
  send: { args: [T.i32, T.ptr, T.u64, T.i32], returns: T.i32 },
  shutdown: { args: [T.i32, T.i32], returns: T.i32 },
  close: { args: [T.i32], returns: T.i32 },
  read: { args: [T.i32, T.ptr, T.u64], returns: T.i32 },
  write: { args: [T.i32, T.ptr, T.u64], returns: T.i32 },
  eventfd: { args: [T.u32, T.i32], returns: T.i32 },
  epoll_create1: { args: [T.i32], returns: T.i32 },
  epoll_ctl: { args: [T.i32, T.i32, T.i32, T.ptr], returns: T.i32 },
  epoll_wait: { args: [T.i32, T.ptr, T.i32, T.i32], returns: T.i32 },
  __errno_location: { args: [], returns: T.ptr },
} as const;

type Symbols = ReturnType<typeof dlopen<typeof SYMBOLS>>["symbols"];

export interface Libc {
  readonly fn: Symbols;
  /** errno of the calling thread, read right after a call that returned -1. */
  errno(): number;
  /** Bytes of one `struct epoll_event` and the offset of its 64-bit data field. */
  readonly epollEventSize: number;
  readonly epollDataOffset: number;
}

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM_NONBLOCK_CLOEXEC = 1 | 0o4000 | 0o2000000;
export const ACCEPT_FLAGS = 0o4000 | 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_LINGER = 13;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const MSG_NOSIGNAL = 0x4000;
export const SHUT_WR = 1;
export const EAGAIN = 11;
export const EINTR = 4;
export const EINPROGRESS = 115;
export const EPOLL_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
/** Wake one of the epoll sets waiting on a shared fd (a listener several threads accept on), not all. */
export const EPOLLEXCLUSIVE = 0x10000000;

let loaded: Libc | null | undefined;

/** libc for the calling thread (errno is per thread, so each thread opens its own). */
export function openLibc(): Libc | undefined {
  if (loaded !== undefined) return loaded ?? undefined;
  loaded = null;
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) return undefined;
  try {
    const lib = dlopen("libc.so.6", SYMBOLS);
    const errnoAt = lib.symbols.__errno_location();
    if (errnoAt === null) return undefined;
    // x86-64 packs epoll_event (4 + 8 bytes); arm64 aligns the data field to 8.
    const packed = process.arch === "x64";
    loaded = {
      fn: lib.symbols,
      errno: () => read.i32(errnoAt, 0),
      epollEventSize: packed ? 12 : 16,
      epollDataOffset: packed ? 4 : 8,
    };
    return loaded;
  } catch {
    return undefined;
  }
}

/** A buffer whose address stays put: the ArrayBuffer exists before any view or pointer is taken. */
export function pinned(bytes: number): { bytes: Uint8Array; view: DataView; at: Pointer } {
  const ab = new ArrayBuffer(bytes);
  const u8 = new Uint8Array(ab);
  const view = new DataView(ab);
  return { bytes: u8, view, at: ptr(u8) };
}

/** struct sockaddr_in / sockaddr_in6 for an IP literal and port; undefined when `host` is no IP. */
export function sockaddr(host: string, port: number): Uint8Array | undefined {
  const ip = parseIP(host);
  if (!ip) return undefined;
  const v6 = ip.family === 6;
  const out = new Uint8Array(v6 ? 28 : 16);
  const v = new DataView(out.buffer);
  v.setUint16(0, v6 ? AF_INET6 : AF_INET, true);
  v.setUint16(2, port, false);
  out.set(ip.bytes, v6 ? 8 : 4);
  return out;
}

/** The IP of a sockaddr filled in by accept4, as the affinity key (v4-mapped IPv6 as plain IPv4). */
export function sockaddrIP(view: DataView): string {
  if (view.getUint16(0, true) === AF_INET) return `${view.getUint8(4)}.${view.getUint8(5)}.${view.getUint8(6)}.${view.getUint8(7)}`;
  let mapped = view.getUint16(18, false) === 0xffff;
  for (let i = 8; i < 18 && mapped; i++) if (view.getUint8(i) !== 0) mapped = false;
  if (mapped) return `${view.getUint8(20)}.${view.getUint8(21)}.${view.getUint8(22)}.${view.getUint8(23)}`;
  return formatIP({ family: 6, bytes: new Uint8Array(view.buffer, view.byteOffset + 8, 16) });
}

/** The port of a sockaddr filled in by getsockname. */
export function sockaddrPort(view: DataView): number {
  return view.getUint16(2, false);
}

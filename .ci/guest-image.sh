#!/usr/bin/env bash
# Builds (or confirms) the cached qemu guest image the IPVS suites boot: Debian's linux-image-amd64
# kernel plus an initramfs with busybox-static and the netfilter/IPVS modules. Idempotent: when the
# image in the cache (KPROXY_VM_CACHE, default /var/cache/kproxy-vm) matches the kernel package and
# the init script, this only looks the kernel package up and exits. Needs: apt, dpkg-deb, depmod
# (kmod), cpio, gzip, busybox-static, and node_modules (run after npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x node_modules/.bin/bun ]; then
  bun=node_modules/.bin/bun
elif command -v bun >/dev/null 2>&1; then
  bun=bun
else
  echo "guest-image: no bun (run npm ci first)" >&2
  exit 1
fi

for tool in apt-get apt-cache dpkg-deb depmod cpio gzip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "guest-image: missing $tool" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "guest-image: missing /bin/busybox (busybox-static)" >&2; exit 1; }

exec "$bun" test/e2e/vm/image.ts

/**
 * The guest's /init (busybox sh) and the kernel modules it loads. Both feed the image's cache key,
 * so editing either rebuilds the initramfs on the next run.
 */

/** Modules the guest needs; their dependencies are added from modules.dep. */
export const GUEST_MODULES: readonly string[] = [
  // host root over 9p, under a tmpfs overlay
  "virtio_pci",
  "9pnet_virtio",
  "9p",
  "overlay",
  // ipvs and its schedulers
  "ip_vs",
  "ip_vs_rr",
  "ip_vs_wrr",
  "ip_vs_lc",
  "ip_vs_wlc",
  "ip_vs_sh",
  "ip_vs_dh",
  "ip_vs_mh",
  "nf_conntrack",
  "nf_nat",
  // ipsets of the types kproxy creates
  "ip_set",
  "ip_set_hash_ip",
  "ip_set_hash_ipport",
  "ip_set_hash_ipportip",
  "ip_set_hash_ipportnet",
  "ip_set_hash_net",
  "ip_set_hash_netport",
  "ip_set_bitmap_port",
  // legacy iptables
  "ip_tables",
  "iptable_nat",
  "iptable_filter",
  "iptable_mangle",
  "ip6_tables",
  "ip6table_nat",
  "ip6table_filter",
  "ip6table_mangle",
  // iptables-nft (Debian's default flavour) and the matches and targets kproxy's rules use
  "nf_tables",
  "nft_compat",
  "nft_chain_nat",
  "nft_ct",
  "nft_nat",
  "nft_masq",
  "xt_ipvs",
  "xt_set",
  "xt_comment",
  "xt_mark",
  "xt_conntrack",
  "xt_addrtype",
  "xt_MASQUERADE",
  "xt_statistic",
  "xt_recent",
  "xt_multiport",
  "xt_tcpudp",
  "xt_nat",
  "xt_physdev",
  "xt_CT",
  "nf_reject_ipv4",
  "ipt_REJECT",
  "nf_reject_ipv6",
  "ip6t_REJECT",
  "xt_REDIRECT",
  // links of the test topology
  "dummy",
  "veth",
  "bridge",
  "br_netfilter",
];

/**
 * Kernel command line keys the init reads:
 *   kproxy.share=PATH  the writable 9p share (tag "results"), mounted at the same PATH in the guest;
 *                      it holds .kproxy-vm/job.sh and receives stdout, stderr and the exit code.
 */
export const GUEST_INIT = String.raw`#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

fail() {
  echo "kproxy-vm: $*"
  poweroff -f
  reboot -f
}

while read -r mod; do
  insmod "/lib/modules/$mod" || echo "kproxy-vm: insmod $mod failed"
done < /modules.order

ip link set lo up

share=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    kproxy.share=*) share=$(echo "$word" | sed "s/^kproxy.share=//") ;;
  esac
done
[ -n "$share" ] || fail "no kproxy.share= on the kernel command line"

mkdir -p /mnt/host /mnt/rw /mnt/results /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/host || fail "cannot mount hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /mnt/results || fail "cannot mount results"
mount -t tmpfs -o mode=0755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot || fail "cannot mount overlay"

mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
mount -t tmpfs run /newroot/run
mkdir -p "/newroot$share"
mount --bind /mnt/results "/newroot$share"

echo "kproxy-vm: running job"
cut -d" " -f1 /proc/uptime > /mnt/results/.kproxy-vm/boot-seconds
chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
  /bin/sh "$share/.kproxy-vm/job.sh" > /mnt/results/.kproxy-vm/stdout 2> /mnt/results/.kproxy-vm/stderr
echo "$?" > /mnt/results/.kproxy-vm/code.tmp
mv /mnt/results/.kproxy-vm/code.tmp /mnt/results/.kproxy-vm/code
sync
echo "kproxy-vm: job done"
umount "/newroot$share" 2>/dev/null
umount /mnt/results 2>/dev/null
poweroff -f
reboot -f
`;

#!/bin/busybox sh
# PID 1 of the small shoal guest (busybox in an initramfs). What it does is chosen on the kernel
# command line:
#   shoal.mode=probe    print the probe marker and power off (the host's KVM/TCG test boot);
#   shoal.mode=cluster  network eth0 as shoal.ip, mount the 9p share "shoal", start the command
#                       server on :7022 and `shoal agent --config /etc/shoal/agent.yaml`;
#   shoal.mode=root     mount shoal.root (the Debian image) and switch to its /sbin/init.
# Lines starting with "SHOAL-VM " are markers the host follows on the serial console.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

mark() { echo "SHOAL-VM $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

MODE=cluster NODE=node IP= ROOT=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        shoal.mode=*) MODE="${arg#shoal.mode=}" ;;
        shoal.node=*) NODE="${arg#shoal.node=}" ;;
        shoal.ip=*) IP="${arg#shoal.ip=}" ;;
        shoal.root=*) ROOT="${arg#shoal.root=}" ;;
    esac
done
mark "userspace at $(uptime_s)s mode=$MODE"

halt_now() { sync; reboot -f; }

if [ "$MODE" = probe ]; then
    mark "probe ok"
    halt_now
fi

if [ "$MODE" = root ]; then
    for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe "$m"; done
    for _ in $(seq 50); do [ -b "$ROOT" ] && break; usleep 100000; done
    if ! mount -t ext4 -o rw "$ROOT" /newroot; then
        mark "error: cannot mount root $ROOT"
        halt_now
    fi
    mark "switching to $ROOT at $(uptime_s)s"
    umount /proc /sys
    mount --move /dev /newroot/dev 2>/dev/null || umount /dev
    exec switch_root /newroot /sbin/init
fi

mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /sys/fs/bpf /var/log /var/lib/shoal /etc/shoal
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in virtio_pci virtio_net virtio_rng 9pnet_virtio 9p veth vxlan bridge tun \
    sch_ingress cls_bpf act_bpf; do
    modprobe "$m" || mark "error: modprobe $m failed"
done
mark "modules at $(uptime_s)s"

hostname "$NODE"
echo "127.0.0.1 localhost $NODE" > /etc/hosts
ip link set lo up
for _ in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; usleep 100000; done
ip link set eth0 up
ip addr add "$IP" dev eth0
sysctl -qw net.ipv4.ip_forward=1
mark "network $IP at $(uptime_s)s"

if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro shoal /mnt/shoal; then
    mark "error: cannot mount the 9p share"
    halt_now
fi
ln -s /mnt/shoal/shoal /bin/shoal
# Host tools shared in with their libraries (etcdctl): linked at their host paths.
if [ -d /mnt/shoal/sysroot ]; then
    (cd /mnt/shoal/sysroot && find . -type f) | while read -r file; do
        file="${file#./}"
        mkdir -p "/${file%/*}"
        ln -sf "/mnt/shoal/sysroot/$file" "/$file"
    done
fi
ln -s /mnt/shoal/shoal /bin/fleetctl
cp "/mnt/shoal/nodes/$NODE/agent.yaml" /etc/shoal/agent.yaml
# A secure cluster's certificates for this node: keys owner-only.
if [ -d "/mnt/shoal/nodes/$NODE/pki" ]; then
    mkdir -p -m 700 /etc/shoal/pki
    cp "/mnt/shoal/nodes/$NODE/pki/"*.pem /etc/shoal/pki/
    chmod 600 /etc/shoal/pki/*-key.pem
fi
nc -ll -p 7022 -e /bin/shoal-exec &
mark "exec server on :7022"
shoal version 2>&1 | while read -r line; do mark "version: $line"; done

# Like shoal.service (Restart=always, RestartSec=2): an agent that exits is started again.
run_agent() {
    while :; do
        shoal agent --config /etc/shoal/agent.yaml 2>&1
        echo "SHOAL-VM agent exited rc=$? at $(uptime_s)s, restarting in 2s"
        sleep 2
    done
}
mark "agent starting at $(uptime_s)s"
run_agent | tee /var/log/shoal-agent.log &

# PID 1 stays, reaping orphans.
while :; do
    wait
    sleep 1
done

#!/bin/sh
# shoal-vm-setup: first service of a vm-cluster node on the Debian image (systemd is PID 1).
# Networks eth0 from the kernel command line (shoal.node, shoal.ip), mounts the 9p share
# "shoal" and installs the agent with `shoal install --config` on the node's #cloud-config
# (which enables and starts shoal.service). Marker lines "SHOAL-VM ..." go to the console
# the host follows.
mark() { echo "SHOAL-VM $*" > /dev/console; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

NODE=node IP=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        shoal.node=*) NODE="${arg#shoal.node=}" ;;
        shoal.ip=*) IP="${arg#shoal.ip=}" ;;
    esac
done
mark "systemd running at $(uptime_s)s"

hostname "$NODE"
echo "$NODE" > /etc/hostname
modprobe -a virtio_net 9pnet_virtio 9p veth vxlan bridge sch_ingress cls_bpf act_bpf
for _ in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.1; done
ip link set lo up
ip link set eth0 up
ip addr add "$IP" dev eth0
sysctl -qw net.ipv4.ip_forward=1
mark "network $IP at $(uptime_s)s"

mkdir -p /mnt/shoal
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro shoal /mnt/shoal; then
    mark "error: cannot mount the 9p share"
    exit 1
fi
mark "version: $(/mnt/shoal/shoal version | head -1)"
# The node is described by a #cloud-config (coreos.etcd2, fleet, flannel, units), which
# shoal.service's `shoal agent --config` reads; its units start docker.service with flannel's
# drop-in through this systemd.
config="/mnt/shoal/nodes/$NODE/cloud-config.yaml"
mark "installing: shoal install --config $config at $(uptime_s)s"
# A secure cluster's certificates go in with the config (/etc/shoal/pki, keys 0600).
pki=""
[ -d "/mnt/shoal/nodes/$NODE/pki" ] && pki="--pki /mnt/shoal/nodes/$NODE/pki"
# `shoal install` also restarts the Docker that started at boot on the drop-in it places.
# shellcheck disable=SC2086 # $pki is empty or two words
if /mnt/shoal/shoal install --config "$config" $pki > /run/shoal-install.log 2>&1; then
    mark "agent starting at $(uptime_s)s (shoal.service $(systemctl is-active shoal.service))"
else
    rc=$?
    mark "error: shoal install exited $rc: $(tail -n 1 /run/shoal-install.log)"
fi

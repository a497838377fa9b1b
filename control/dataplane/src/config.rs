//! What a dataplane instance is: its interface, addresses, wire format and hooks.
use std::{net::Ipv4Addr, path::PathBuf};

use ipnetwork::Ipv4Network;
use shoal_dataplane_common::{
    FLANNEL_UDP_DEFAULT_PORT, PIN_ROOT, VXLAN_DEFAULT_PORT, VXLAN_DEFAULT_VNI,
};

use crate::MacAddr;

/// Where decapsulation runs on the underlay device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapHook {
    /// TC on a veth underlay, XDP on anything else (see [`DecapHook::for_device_kind`]).
    Auto,
    /// XDP (native, or generic as a fallback), with GRO turned on behind it: the fast path of a
    /// physical NIC, whose frames arrive at MTU size and are merged after decapsulation.
    Xdp,
    /// TC ingress (TCX): a veth underlay delivers the sender's 64 KB GSO packets whole, which TC
    /// decapsulates once (XDP would make the peer segment them first).
    Tc,
}

impl DecapHook {
    /// The hook `Auto` stands for on a device of `kind` (`ip -d link`'s kind; `None` for a
    /// physical device).
    pub fn for_device_kind(self, kind: Option<&str>) -> DecapHook {
        match (self, kind) {
            (DecapHook::Auto, Some("veth")) => DecapHook::Tc,
            (DecapHook::Auto, _) => DecapHook::Xdp,
            (hook, _) => hook,
        }
    }
}

/// How the TC programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX links (Linux 6.6+); a clsact qdisc where the kernel refuses TCX.
    Auto,
    /// TCX links only.
    Tcx,
    /// cls_bpf filters on a clsact qdisc (kernels before 6.6). They are not bpf links: they stay
    /// attached without a pin, a restart replaces them in place, `detach` deletes them.
    Clsact,
}

/// What a dataplane instance is: its interface, addresses and wire format.
#[derive(Clone, Debug)]
pub struct Config {
    /// The underlay device (the programs attach here).
    pub interface: String,
    /// This node's underlay address (outer source; decapsulation only for packets to it).
    pub underlay_ip: Ipv4Addr,
    /// This node's subnet: decapsulated packets must be addressed inside it.
    pub local_subnet: Ipv4Network,
    /// Pin directory is `<pin_root>/<instance>`; parallel instances need distinct names.
    pub pin_root: PathBuf,
    pub instance: String,
    pub vni: u32,
    pub vxlan_port: u16,
    pub udp_port: u16,
    /// This node's VTEP MAC; the underlay device's MAC when `None`.
    pub vtep_mac: Option<MacAddr>,
    pub decap_hook: DecapHook,
    pub tc_attach: TcAttach,
    /// Install the kernel route and neighbour of each overlay route (see
    /// [`Dataplane::set_route`](crate::Dataplane::set_route)).
    pub manage_kernel_routes: bool,
    /// Preferred source of locally originated overlay traffic (for example the bridge address in
    /// the local subnet, as flannel's `flannel.1` address is); must be a local address.
    pub route_source: Option<Ipv4Addr>,
}

impl Config {
    /// flannel's defaults (VNI 1, port 8472, udp port 8285), decapsulation hook chosen by device
    /// kind, kernel routes managed, pins under `/sys/fs/bpf/shoal/<interface>`.
    pub fn new(interface: &str, underlay_ip: Ipv4Addr, local_subnet: Ipv4Network) -> Self {
        Self {
            interface: interface.to_string(),
            underlay_ip,
            local_subnet,
            pin_root: PathBuf::from(PIN_ROOT),
            instance: interface.to_string(),
            vni: VXLAN_DEFAULT_VNI,
            vxlan_port: VXLAN_DEFAULT_PORT,
            udp_port: FLANNEL_UDP_DEFAULT_PORT,
            vtep_mac: None,
            decap_hook: DecapHook::Auto,
            tc_attach: TcAttach::Auto,
            manage_kernel_routes: true,
            route_source: None,
        }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_decapsulates_on_tc_on_veth_and_on_xdp_elsewhere() {
        assert_eq!(DecapHook::Auto.for_device_kind(Some("veth")), DecapHook::Tc);
        assert_eq!(DecapHook::Auto.for_device_kind(None), DecapHook::Xdp);
        assert_eq!(
            DecapHook::Auto.for_device_kind(Some("bond")),
            DecapHook::Xdp
        );
        assert_eq!(DecapHook::Xdp.for_device_kind(Some("veth")), DecapHook::Xdp);
        assert_eq!(DecapHook::Tc.for_device_kind(None), DecapHook::Tc);
    }
}

//! shoal's overlay dataplane. Built for `bpfel-unknown-none` by `control/dataplane/build.rs` and
//! loaded by the `shoal-dataplane` crate.
//!
//! - `shoal_tc_egress` (TC egress on the underlay device): VXLAN or flannel-`udp` encapsulation
//!   of packets whose destination is a remote subnet in the routes map.
//! - `shoal_tc_workload` (TC ingress on the devices local workloads hang off): the same
//!   encapsulation one hop earlier, straight to the underlay device.
//! - `shoal_xdp_ingress` (XDP on the underlay device) or `shoal_tc_ingress` (TC ingress): checks
//!   and decapsulation of overlay packets addressed to this node; the inner packet goes to the
//!   kernel stack, which routes it to the workload.
//!
//! Everything else passes untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod decap;
#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod headers;
#[cfg(target_arch = "bpf")]
mod maps;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    /// Ingress on the underlay interface: decapsulation (XDP variant).
    #[xdp]
    pub fn shoal_xdp_ingress(ctx: XdpContext) -> u32 {
        crate::decap::xdp_ingress(&ctx)
    }

    /// Ingress on the underlay interface: decapsulation (TC variant).
    #[classifier]
    pub fn shoal_tc_ingress(ctx: TcContext) -> i32 {
        crate::decap::tc_ingress(&ctx)
    }

    /// Egress towards the underlay: encapsulation.
    #[classifier]
    pub fn shoal_tc_egress(ctx: TcContext) -> i32 {
        crate::encap::tc_egress(&ctx)
    }

    /// Ingress of the devices local workloads hang off: encapsulation without the node's
    /// forwarding path.
    #[classifier]
    pub fn shoal_tc_workload(ctx: TcContext) -> i32 {
        crate::encap::tc_workload_ingress(&ctx)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

/// On the host this crate only type-checks; the real object is built for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

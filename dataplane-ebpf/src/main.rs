//! shoal's overlay dataplane. Built for `bpfel-unknown-none` by `control/dataplane/build.rs` and
//! loaded by the `shoal-dataplane` crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_OK, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };

    /// Ingress on the underlay interface: decapsulation lands here.
    #[xdp]
    pub fn shoal_xdp_ingress(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// Egress towards the underlay: encapsulation lands here.
    #[classifier]
    pub fn shoal_tc_egress(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
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

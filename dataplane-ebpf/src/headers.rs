//! Wire headers as byte arrays (alignment 1, so any offset is valid) and the arithmetic on them.

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;
pub const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
pub const IPPROTO_UDP: u8 = 17;
pub const AF_INET: u8 = 2;
/// Version 4, header length 5 words: an IPv4 header without options.
pub const IPV4_NO_OPTIONS: u8 = 0x45;
/// Flags byte of a VXLAN header with the I (valid VNI) flag.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub csum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub csum: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VxlanHdr {
    pub flags: [u8; 4],
    pub vni: [u8; 4],
}

impl Ipv4Hdr {
    /// An outer header from `src` to `dst` carrying `payload_len` bytes of UDP, with DF set, the
    /// ECN bits of the inner header (RFC 6040 normal mode) and a valid checksum.
    #[inline(always)]
    pub fn outer_udp(src: [u8; 4], dst: [u8; 4], payload_len: u32, inner_tos: u8) -> Self {
        let mut ecn = inner_tos & 0x03;
        if ecn == 0x03 {
            // CE on the inner header becomes ECT(0) outside, as the kernel tunnels do.
            ecn = 0x02;
        }
        let tot_len = (IPV4_LEN as u32 + payload_len) as u16;
        let mut hdr = Self {
            version_ihl: IPV4_NO_OPTIONS,
            tos: ecn,
            tot_len: tot_len.to_be_bytes(),
            id: [0, 0],
            frag: [0x40, 0x00],
            ttl: shoal_dataplane_common::OUTER_TTL,
            proto: IPPROTO_UDP,
            csum: [0, 0],
            src,
            dst,
        };
        hdr.csum = hdr.checksum().to_be_bytes();
        hdr
    }

    /// The RFC 791 header checksum over the 20 bytes (the checksum field taken as it is).
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        let words = [
            u16::from_be_bytes([self.version_ihl, self.tos]),
            u16::from_be_bytes(self.tot_len),
            u16::from_be_bytes(self.id),
            u16::from_be_bytes(self.frag),
            u16::from_be_bytes([self.ttl, self.proto]),
            u16::from_be_bytes(self.csum),
            u16::from_be_bytes([self.src[0], self.src[1]]),
            u16::from_be_bytes([self.src[2], self.src[3]]),
            u16::from_be_bytes([self.dst[0], self.dst[1]]),
            u16::from_be_bytes([self.dst[2], self.dst[3]]),
        ];
        let mut sum: u32 = 0;
        for word in words {
            sum += u32::from(word);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    /// The header as `ip_forward` leaves it: TTL - 1, the checksum updated incrementally as
    /// `ip_decrease_ttl` does (the caller made sure the TTL is above 1).
    #[inline(always)]
    pub fn forwarded(&self) -> Self {
        // The TTL is the high byte of its 16-bit word: one less there is 0x0100 more in the
        // ones' complement checksum.
        let check = u32::from(u16::from_be_bytes(self.csum)) + 0x0100;
        let check = check + u32::from(check >= 0xffff);
        Self {
            ttl: self.ttl - 1,
            csum: (check as u16).to_be_bytes(),
            ..*self
        }
    }

    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        // More-fragments flag or a non-zero offset.
        (u16::from_be_bytes(self.frag) & 0x3fff) != 0
    }

    #[inline(always)]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.tot_len))
    }
}

impl UdpHdr {
    /// A UDP header with checksum 0 (allowed over IPv4, and what the kernel VXLAN device sends
    /// unless `udpcsum` is set).
    #[inline(always)]
    pub fn new(sport: u16, dport: [u8; 2], payload_len: u32) -> Self {
        Self {
            sport: sport.to_be_bytes(),
            dport,
            len: ((UDP_LEN as u32 + payload_len) as u16).to_be_bytes(),
            csum: [0, 0],
        }
    }
}

impl VxlanHdr {
    #[inline(always)]
    pub fn new(vni: u32) -> Self {
        let vni = vni.to_be_bytes();
        Self {
            flags: [VXLAN_FLAG_VNI, 0, 0, 0],
            vni: [vni[1], vni[2], vni[3], 0],
        }
    }

    /// Whether the header is exactly what RFC 7348 allows: the I flag and every reserved bit zero
    /// (the kernel VXLAN device drops anything else too).
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.flags == [VXLAN_FLAG_VNI, 0, 0, 0] && self.vni[3] == 0
    }

    #[inline(always)]
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.vni[0], self.vni[1], self.vni[2]])
    }
}

/// The outer UDP source port for a flow hash, spread over the ephemeral range exactly as the
/// kernel's `udp_flow_src_port` does.
#[inline(always)]
pub fn source_port(hash: u32) -> u16 {
    use shoal_dataplane_common::{SOURCE_PORT_MAX, SOURCE_PORT_MIN};
    let range = u64::from(SOURCE_PORT_MAX - SOURCE_PORT_MIN) + 1;
    ((u64::from(hash) * range) >> 32) as u16 + SOURCE_PORT_MIN
}

/// Whether `addr` lies in `network`/`mask` (all network order).
#[inline(always)]
pub fn in_subnet(addr: [u8; 4], network: [u8; 4], mask: [u8; 4]) -> bool {
    u32::from_ne_bytes(addr) & u32::from_ne_bytes(mask) == u32::from_ne_bytes(network)
}

/// Fills `slot` with the parameters of an IPv4 `bpf_fib_lookup` from `src` to `dst`, starting
/// at device `ifindex`, every other field zero. In place and word by word: `mem::zeroed()` of
/// this 64-byte struct (or moving it) compiles to calls to compiler_builtins' byte-at-a-time
/// `memset` (a 64-iteration loop per packet, 1.5% of the machine's CPU in the 64-byte
/// benchmark).
#[inline(always)]
pub fn fib_params(
    slot: &mut core::mem::MaybeUninit<aya_ebpf::bindings::bpf_fib_lookup>,
    ifindex: u32,
    l4_protocol: u8,
    tos: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> &mut aya_ebpf::bindings::bpf_fib_lookup {
    const WORDS: usize = core::mem::size_of::<aya_ebpf::bindings::bpf_fib_lookup>() / 4;
    let words = slot.as_mut_ptr().cast::<u32>();
    for word in 0..WORDS {
        // SAFETY: the struct is 4-byte aligned and WORDS * 4 bytes long; volatile keeps LLVM
        // from folding the stores back into a memset call.
        unsafe { words.add(word).write_volatile(0) };
    }
    // SAFETY: every byte is initialised, and all-zero is a valid value of this plain C struct.
    let params = unsafe { slot.assume_init_mut() };
    params.family = AF_INET;
    params.l4_protocol = l4_protocol;
    params.ifindex = ifindex;
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    params
}

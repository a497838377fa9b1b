//! Facts and settings of a network device: index, MAC, MTU, name and GRO through ioctls, its
//! kind through netlink.
use std::{ffi::CString, io};

use crate::{Error, MacAddr, Result, error::netlink_error};

/// Index, MAC and MTU of an interface in the current network namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InterfaceInfo {
    pub index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
}

pub(crate) fn interface_info(name: &str) -> Result<InterfaceInfo> {
    let fail = |what: &str, source: io::Error| Error::Interface {
        interface: name.to_string(),
        message: format!("{what}: {source}"),
    };
    let c_name = CString::new(name).map_err(|_| Error::Interface {
        interface: name.to_string(),
        message: "name contains NUL".into(),
    })?;
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(fail("no such interface", io::Error::last_os_error()));
    }
    let socket = Socket::udp().map_err(|err| fail("opening an ioctl socket", err))?;
    let mut req = ifreq_for(name);
    socket
        .ioctl(libc::SIOCGIFHWADDR, &mut req)
        .map_err(|err| fail("reading the MAC address", err))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hwaddr = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (byte, raw) in mac.iter_mut().zip(hwaddr.iter()) {
        *byte = *raw as u8;
    }
    let mut req = ifreq_for(name);
    socket
        .ioctl(libc::SIOCGIFMTU, &mut req)
        .map_err(|err| fail("reading the MTU", err))?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu } as u32;
    Ok(InterfaceInfo {
        index,
        mac: MacAddr(mac),
        mtu,
    })
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    req
}

struct Socket(libc::c_int);

impl Socket {
    fn udp() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: the request reads/writes one ifreq, which we own.
        if unsafe { libc::ioctl(self.0, request, req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value` of the legacy ethtool ioctls.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool_value(socket: &Socket, name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    socket.ioctl(libc::SIOCETHTOOL, &mut req)?;
    Ok(value.data)
}

/// Turns generic receive offload on for `name`; returns whether it was off. XDP on a veth needs
/// it so that decapsulated frames are merged again before forwarding (kernels since 6.9 no longer
/// turn it on when XDP is attached); physical NICs have it on by default.
pub(crate) fn enable_gro(name: &str) -> Result<bool> {
    let fail = |what: &str, source: io::Error| Error::Interface {
        interface: name.to_string(),
        message: format!("{what}: {source}"),
    };
    let socket = Socket::udp().map_err(|err| fail("opening an ioctl socket", err))?;
    let on = ethtool_value(&socket, name, ETHTOOL_GGRO, 0)
        .map_err(|err| fail("reading the GRO setting", err))?;
    if on != 0 {
        return Ok(false);
    }
    ethtool_value(&socket, name, ETHTOOL_SGRO, 1).map_err(|err| fail("turning GRO on", err))?;
    Ok(true)
}

/// The name of the device with index `ifindex` in this network namespace.
pub(crate) fn interface_name(ifindex: u32) -> Result<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return Err(Error::Interface {
            interface: format!("ifindex {ifindex}"),
            message: format!("no such device: {}", io::Error::last_os_error()),
        });
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// The kind of device `name` is (`veth`, `bridge`, ...; `None` for a physical device).
pub(crate) fn link_kind(name: &str) -> Result<Option<String>> {
    let interface = name.to_string();
    let link =
        shoal_netlink::block_on(|netlink| async move { netlink.link_by_name(&interface).await })
            .map_err(netlink_error(name))?;
    let link = link.ok_or_else(|| Error::Interface {
        interface: name.to_string(),
        message: "no such device".into(),
    })?;
    Ok(link.kind)
}

//! What the dataplane needs from the rest of the system: bpffs, interface facts, and the kernel
//! routes/neighbours that steer overlay traffic to the underlay device. Everything acts in the
//! calling thread's network namespace.
use std::{ffi::CString, io, net::Ipv4Addr, path::Path, process::Command};

use ipnetwork::Ipv4Network;

use crate::{Error, MacAddr, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs on `/sys/fs/bpf` unless something already provides it there.
pub(crate) fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(mount_point) || is_bpffs(mount_point) {
        return Ok(());
    }
    let target = CString::new("/sys/fs/bpf").expect("no NUL in a literal");
    let fstype = CString::new("bpf").expect("no NUL in a literal");
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            context: "mounting bpffs on /sys/fs/bpf".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) fills a zeroed plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and output struct.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

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

/// The kernel side of one overlay route, laid out as flanneld lays out `flannel.1`: the subnet
/// is routed on-link via its network address, whose neighbour entry is permanent. The route MTU
/// makes the kernel answer too-big packets exactly as it does for a VXLAN device of that MTU.
pub(crate) struct KernelRoute<'a> {
    pub interface: &'a str,
    pub subnet: Ipv4Network,
    pub neighbour_mac: MacAddr,
    pub mtu: u32,
    pub source: Option<Ipv4Addr>,
}

impl KernelRoute<'_> {
    fn gateway(&self) -> String {
        self.subnet.network().to_string()
    }

    pub(crate) fn install(&self) -> Result<()> {
        let gateway = self.gateway();
        let mac = self.neighbour_mac.to_string();
        ip(&[
            "neigh",
            "replace",
            &gateway,
            "lladdr",
            &mac,
            "dev",
            self.interface,
            "nud",
            "permanent",
        ])?;
        let subnet = self.subnet.to_string();
        let mtu = self.mtu.to_string();
        let mut args = vec![
            "route",
            "replace",
            &subnet,
            "via",
            &gateway,
            "dev",
            self.interface,
            "onlink",
            "mtu",
            &mtu,
        ];
        let source = self.source.map(|src| src.to_string());
        if let Some(src) = &source {
            args.extend(["src", src.as_str()]);
        }
        ip(&args)
    }

    /// Removes the route and neighbour; entries already gone are not an error.
    pub(crate) fn remove(&self) -> Result<()> {
        let gateway = self.gateway();
        let subnet = self.subnet.to_string();
        ip_ignoring_missing(&["route", "del", &subnet, "dev", self.interface])?;
        ip_ignoring_missing(&["neigh", "del", &gateway, "dev", self.interface])
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| Error::Io {
            context: format!("running ip {}", args.join(" ")),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn ip_ignoring_missing(args: &[&str]) -> Result<()> {
    match ip(args) {
        Err(Error::Command { stderr, .. })
            if stderr.contains("No such process")
                || stderr.contains("Cannot find")
                || stderr.contains("No such file") =>
        {
            Ok(())
        }
        other => other,
    }
}

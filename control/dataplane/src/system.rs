//! What the dataplane needs from the rest of the system: bpffs, interface facts, and the kernel
//! routes/neighbours that steer overlay traffic to the underlay device. Everything acts in the
//! calling thread's network namespace.
use std::{collections::HashMap, ffi::CString, io, net::Ipv4Addr, path::Path, process::Command};

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
    run("ip", args).map(drop)
}

/// `tc filter show dev <interface> <direction>` (cls_bpf filters name their program).
pub(crate) fn tc_filters(interface: &str, direction: &str) -> Result<String> {
    run("tc", &["filter", "show", "dev", interface, direction])
}

/// Runs `program args...`; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let command = || format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Io {
            context: format!("running {}", command()),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: command(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs an iproute2 command with `-j` and parses its JSON array.
fn run_json(program: &str, args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let text = run(program, args)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|err| Error::Command {
        command: format!("{program} {}", args.join(" ")),
        stderr: format!("unparsable JSON output: {err}"),
    })
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

/// One network device as `ip -d link` describes it.
#[derive(Clone, Debug)]
struct Link {
    index: u32,
    name: String,
    /// `veth`, `bridge`, ... (`None` for physical devices).
    kind: Option<String>,
    mac: Option<MacAddr>,
}

fn links() -> Result<Vec<Link>> {
    let links = run_json("ip", &["-j", "-d", "link", "show"])?;
    Ok(links
        .iter()
        .filter_map(|link| {
            Some(Link {
                index: u32::try_from(link["ifindex"].as_u64()?).ok()?,
                name: link["ifname"].as_str()?.to_string(),
                kind: link["linkinfo"]["info_kind"].as_str().map(str::to_string),
                mac: link["address"].as_str().and_then(|mac| mac.parse().ok()),
            })
        })
        .collect())
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
    let links = run_json("ip", &["-j", "-d", "link", "show", "dev", name])?;
    Ok(links
        .first()
        .and_then(|link| link["linkinfo"]["info_kind"].as_str())
        .map(str::to_string))
}

/// A local workload found in the kernel's tables (see [`discover_endpoints`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FoundEndpoint {
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    /// The device the kernel routes the address to (its neighbour entry's device).
    pub via_ifindex: u32,
    /// The device frames for it leave on: the bridge port holding its MAC, or `via` itself.
    pub port_ifindex: u32,
    pub port_is_veth: bool,
    /// The bridge's own MAC, which the workload's default route resolves to, when `via` is a
    /// bridge (`port_ifindex` then is one of its ports).
    pub gateway_mac: Option<MacAddr>,
}

/// Workloads in `subnet` as the kernel knows them, however they were wired: each resolved
/// neighbour entry in the subnet, on a bridge (the port from the bridge's forwarding database)
/// or directly on a device (a routed veth, as CNI's ptp plugin makes).
pub(crate) fn discover_endpoints(subnet: Ipv4Network) -> Result<Vec<FoundEndpoint>> {
    let links = links()?;
    let by_name: HashMap<&str, &Link> = links
        .iter()
        .map(|link| (link.name.as_str(), link))
        .collect();
    let mut bridge_ports: HashMap<String, HashMap<MacAddr, String>> = HashMap::new();
    let mut found = Vec::new();
    for neighbour in run_json("ip", &["-j", "-4", "neigh", "show"])? {
        let Some((address, mac, device)) = usable_neighbour(&neighbour, subnet) else {
            continue;
        };
        let Some(via) = by_name.get(device) else {
            continue;
        };
        let on_bridge = via.kind.as_deref() == Some("bridge");
        let port_name = if on_bridge {
            if !bridge_ports.contains_key(device) {
                bridge_ports.insert(device.to_string(), bridge_fdb(device)?);
            }
            match bridge_ports.get(device).and_then(|ports| ports.get(&mac)) {
                Some(port) => port.clone(),
                None => continue,
            }
        } else {
            device.to_string()
        };
        let Some(port) = by_name.get(port_name.as_str()) else {
            continue;
        };
        found.push(FoundEndpoint {
            address,
            mac,
            via_ifindex: via.index,
            port_ifindex: port.index,
            port_is_veth: port.kind.as_deref() == Some("veth"),
            gateway_mac: if on_bridge { via.mac } else { None },
        });
    }
    Ok(found)
}

/// Address, MAC and device of a neighbour entry in `subnet` that resolves to a MAC.
fn usable_neighbour(
    neighbour: &serde_json::Value,
    subnet: Ipv4Network,
) -> Option<(Ipv4Addr, MacAddr, &str)> {
    let address: Ipv4Addr = neighbour["dst"].as_str()?.parse().ok()?;
    if !subnet.contains(address) || address == subnet.network() || address == subnet.broadcast() {
        return None;
    }
    let unusable = neighbour["state"].as_array().is_some_and(|states| {
        states
            .iter()
            .any(|state| matches!(state.as_str(), Some("FAILED" | "INCOMPLETE" | "NOARP")))
    });
    if unusable {
        return None;
    }
    let mac = neighbour["lladdr"].as_str()?.parse().ok()?;
    Some((address, mac, neighbour["dev"].as_str()?))
}

/// MAC -> port name of the addresses `bridge` learned or was given on its ports (entries of the
/// bridge device itself and a port's own `self` entries left out).
fn bridge_fdb(bridge: &str) -> Result<HashMap<MacAddr, String>> {
    let entries = run_json("bridge", &["-j", "fdb", "show", "br", bridge])?;
    Ok(entries
        .iter()
        .filter(|entry| entry["master"].as_str() == Some(bridge))
        .filter_map(|entry| {
            let mac = entry["mac"].as_str()?.parse().ok()?;
            Some((mac, entry["ifname"].as_str()?.to_string()))
        })
        .collect())
}

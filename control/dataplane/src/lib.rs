//! Userspace API of the eBPF overlay dataplane. The control plane calls this crate to load and
//! attach the programs, program routes and read counters.
//!
//! ```no_run
//! # fn main() -> Result<(), shoal_dataplane::Error> {
//! use shoal_dataplane::{Backend, Config, Dataplane, MacAddr, RouteTarget};
//! let config = Config::new("eth0", "10.99.0.1".parse().unwrap(), "10.244.1.0/24".parse().unwrap());
//! let mut dataplane = Dataplane::load_or_attach(config)?;
//! dataplane.set_route(
//!     "10.244.2.0/24".parse().unwrap(),
//!     RouteTarget {
//!         underlay_ip: "10.99.0.2".parse().unwrap(),
//!         vtep_mac: "02:00:00:00:00:02".parse().unwrap(),
//!         backend: Backend::Vxlan,
//!     },
//! )?;
//! println!("{:?}", dataplane.stats()?);
//! # Ok(()) }
//! ```
//!
//! Everything acts in the calling thread's network namespace (the interface is looked up there,
//! routes are installed there). Maps and links are pinned under `<pin_root>/<instance>/`, so a
//! new process calling [`Dataplane::load_or_attach`] with the same config takes over without
//! interrupting traffic: the maps (routes, counters) are reused and the new programs replace the
//! old ones atomically in the pinned links. Only [`Dataplane::detach`] removes the dataplane;
//! dropping a [`Dataplane`] leaves it running.
use std::{
    fmt, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
    },
};
use ipnetwork::Ipv4Network;
pub use shoal_dataplane_common::{Backend, Counter};
use shoal_dataplane_common::{
    CONFIG_MAP, COUNTERS_MAP, DataplaneConfig, ENDPOINTS_MAP, FLANNEL_UDP_DEFAULT_PORT,
    LocalEndpoint, PIN_ROOT, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_WORKLOAD, PROG_XDP_INGRESS,
    ROUTES_MAP, RouteTarget as RawTarget, VXLAN_DEFAULT_PORT, VXLAN_DEFAULT_VNI,
    WORKLOAD_PORTS_MAP, WorkloadPort,
};

mod system;

use system::{InterfaceInfo, KernelRoute};

/// The eBPF object built from `dataplane-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-dataplane"));

/// Counter totals of the dataplane pinned in `pin_dir` (`<pin_root>/<instance>`), read without
/// loading or attaching anything: for a metrics exporter in another process, such as the agent.
pub fn read_pinned_stats(pin_dir: &Path) -> Result<Stats> {
    let place = pin_dir.display().to_string();
    let map_error = |source| map_error(COUNTERS_MAP, &place, source);
    let data = MapData::from_pin(pin_dir.join(COUNTERS_MAP)).map_err(map_error)?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(map_error)?;
    sum_counters(&counters).map_err(map_error)
}

/// Makes the endpoints map of the dataplane pinned in `pin_dir` hold the local workloads of
/// `subnet` the kernel knows now (see [`Dataplane::sync_endpoints`]), without loading or
/// attaching anything: for a periodic task beside the handle's owner, such as the agent's.
/// Returns how many are registered.
pub fn sync_pinned_endpoints(pin_dir: &Path, subnet: Ipv4Network) -> Result<usize> {
    let mut maps = WorkloadMaps::from_pins(pin_dir)?;
    maps.reconcile(subnet, pin_dir)
}

/// The maps that describe local workloads: where to deliver to them, and which of the devices
/// they hang off are bridge ports.
struct WorkloadMaps {
    endpoints: BpfHashMap<MapData, [u8; 4], LocalEndpoint>,
    ports: BpfHashMap<MapData, u32, WorkloadPort>,
    /// Where the maps live, for errors.
    place: String,
}

impl WorkloadMaps {
    fn from_pins(pin_dir: &Path) -> Result<Self> {
        let place = pin_dir.display().to_string();
        let open = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name))
                .map(aya::maps::Map::HashMap)
                .map_err(|source| map_error(name, &place, source))
        };
        let endpoints = BpfHashMap::try_from(open(ENDPOINTS_MAP)?)
            .map_err(|source| map_error(ENDPOINTS_MAP, &place, source))?;
        let ports = BpfHashMap::try_from(open(WORKLOAD_PORTS_MAP)?)
            .map_err(|source| map_error(WORKLOAD_PORTS_MAP, &place, source))?;
        Ok(Self {
            endpoints,
            ports,
            place,
        })
    }

    fn from_object(ebpf: &mut Ebpf, interface: &str) -> Result<Self> {
        let endpoints = BpfHashMap::try_from(take_map(ebpf, ENDPOINTS_MAP, interface)?)
            .map_err(|source| map_error(ENDPOINTS_MAP, interface, source))?;
        let ports = BpfHashMap::try_from(take_map(ebpf, WORKLOAD_PORTS_MAP, interface)?)
            .map_err(|source| map_error(WORKLOAD_PORTS_MAP, interface, source))?;
        Ok(Self {
            endpoints,
            ports,
            place: interface.to_string(),
        })
    }

    /// Replaces the registered endpoints with the workloads of `subnet` found in the kernel's
    /// tables, and hooks the devices they hang off (see [`hook_workload_devices`]): the bridge
    /// ports, registered with their bridge's MAC before they are hooked and forgotten only once
    /// unhooked, and the bridges and routed veths themselves.
    fn reconcile(&mut self, subnet: Ipv4Network, pin_dir: &Path) -> Result<usize> {
        let found = system::discover_endpoints(subnet)?;
        let endpoints: Vec<Endpoint> = found.iter().copied().map(Endpoint::from).collect();
        self.set_endpoints(&endpoints)?;
        let mut ports: Vec<(u32, WorkloadPort)> = found
            .iter()
            .filter_map(|endpoint| {
                let gateway_mac = endpoint.gateway_mac?.0;
                let port = WorkloadPort {
                    gateway_mac,
                    _pad: [0; 2],
                };
                Some((endpoint.port_ifindex, port))
            })
            .collect();
        ports.sort_unstable_by_key(|(ifindex, _)| *ifindex);
        ports.dedup_by_key(|(ifindex, _)| *ifindex);
        for (ifindex, port) in &ports {
            self.ports
                .insert(ifindex, port, 0)
                .map_err(|source| self.error(WORKLOAD_PORTS_MAP, source))?;
        }
        let mut devices: Vec<u32> = endpoints
            .iter()
            .map(|endpoint| endpoint.via_ifindex)
            .chain(ports.iter().map(|(ifindex, _)| *ifindex))
            .collect();
        devices.sort_unstable();
        devices.dedup();
        hook_workload_devices(pin_dir, &devices)?;
        let kept: Vec<u32> = ports.iter().map(|(ifindex, _)| *ifindex).collect();
        remove_keys_except(&mut self.ports, &kept)
            .map_err(|source| self.error(WORKLOAD_PORTS_MAP, source))?;
        Ok(endpoints.len())
    }

    fn set_endpoints(&mut self, endpoints: &[Endpoint]) -> Result<()> {
        let kept: Vec<[u8; 4]> = endpoints
            .iter()
            .map(|endpoint| endpoint.address.octets())
            .collect();
        remove_keys_except(&mut self.endpoints, &kept)
            .map_err(|source| self.error(ENDPOINTS_MAP, source))?;
        for endpoint in endpoints {
            self.endpoints
                .insert(endpoint.address.octets(), endpoint.to_raw(), 0)
                .map_err(|source| self.error(ENDPOINTS_MAP, source))?;
        }
        Ok(())
    }

    fn error(&self, map: &'static str, source: aya::maps::MapError) -> Error {
        map_error(map, &self.place, source)
    }
}

/// An error of map `map` of the dataplane at `place` (its interface, or its pin directory).
fn map_error(map: &'static str, place: &str, source: aya::maps::MapError) -> Error {
    Error::Map {
        map,
        interface: place.to_string(),
        source: Box::new(source),
    }
}

/// Removes every key of `map` not in `kept`.
fn remove_keys_except<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    kept: &[K],
) -> Result<(), aya::maps::MapError> {
    let registered: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for key in registered.iter().filter(|key| !kept.contains(key)) {
        remove_key(map, key)?;
    }
    Ok(())
}

/// Removes `key` from `map`; a key already gone is not an error.
fn remove_key<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
) -> Result<(), aya::maps::MapError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(source),
    }
}

/// Pin of the loaded workload-ingress program, which [`hook_workload_devices`] attaches.
const PROG_PIN_WORKLOAD: &str = "prog_tc_workload";

/// Prefix of the pins of the workload-ingress program's TCX links, one per hooked device.
const WORKLOAD_LINK_PIN_PREFIX: &str = "link_workload_";

/// Pin of the TCX link of the workload-ingress program on device `ifindex`.
fn workload_link_pin(pin_dir: &Path, ifindex: u32) -> PathBuf {
    pin_dir.join(format!("{WORKLOAD_LINK_PIN_PREFIX}{ifindex}"))
}

/// The devices with a pinned workload link in `pin_dir`, and their pins.
fn workload_link_pins(pin_dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = std::fs::read_dir(pin_dir).map_err(|source| Error::Io {
        context: format!("listing {}", pin_dir.display()),
        source,
    })?;
    Ok(entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let ifindex = name.to_str()?.strip_prefix(WORKLOAD_LINK_PIN_PREFIX)?;
            Some((ifindex.parse().ok()?, entry.path()))
        })
        .collect())
}

/// Attaches the pinned workload-ingress program (`shoal_tc_workload`) to the TC ingress of every
/// device in `devices` (the bridge ports, bridges or routed veths local workloads hang off) not
/// hooked yet, so their packets to remote subnets are encapsulated there instead of after the
/// node's bridge and IP forwarding, and unhooks the devices no workload hangs off any more.
/// Best effort: a device that cannot be hooked (a kernel without TCX, a device gone) keeps the
/// kernel path, which works the same, and is logged.
fn hook_workload_devices(pin_dir: &Path, devices: &[u32]) -> Result<()> {
    for (ifindex, pin) in workload_link_pins(pin_dir)? {
        if !devices.contains(&ifindex) {
            // Unpinning drops the last reference to the link: the program detaches.
            remove_file_if_exists(&pin)?;
            tracing::debug!(ifindex, "workload device unhooked");
        }
    }
    for &ifindex in devices {
        let link_path = workload_link_pin(pin_dir, ifindex);
        if link_path.exists() {
            continue;
        }
        match hook_workload_device(pin_dir, ifindex, &link_path) {
            Ok(device) => tracing::info!(%device, "workload device hooked"),
            Err(err) => tracing::warn!(ifindex, "workload device keeps the kernel path: {err}"),
        }
    }
    Ok(())
}

fn hook_workload_device(pin_dir: &Path, ifindex: u32, link_path: &Path) -> Result<String> {
    let device = system::interface_name(ifindex)?;
    let failed = |what: &str, err: &dyn fmt::Display| Error::Interface {
        interface: device.clone(),
        message: format!("{what}: {err}"),
    };
    let program_pin = pin_dir.join(PROG_PIN_WORKLOAD);
    let mut program = SchedClassifier::from_pin(&program_pin)
        .map_err(|err| failed(&format!("opening {}", program_pin.display()), &err))?;
    let id = program
        .attach_with_options(
            &device,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|err| failed("attaching shoal_tc_workload (TCX)", &err))?;
    let link = program
        .take_link(id)
        .map_err(|err| failed("taking the link", &err))?;
    let link = FdLink::try_from(link).map_err(|err| failed("taking the link", &err))?;
    link.pin(link_path)
        .map_err(|err| failed(&format!("pinning {}", link_path.display()), &err))?;
    Ok(device)
}

/// Loads the workload-ingress program and pins it for [`hook_workload_devices`]; workload links
/// an earlier process pinned get this program, atomically.
fn pin_workload_program(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<()> {
    let program = load_classifier(ebpf, PROG_TC_WORKLOAD, config)?;
    let program_pin = pin_dir.join(PROG_PIN_WORKLOAD);
    remove_file_if_exists(&program_pin)?;
    program
        .pin(&program_pin)
        .map_err(|err| link_error(config, &program_pin, err))?;
    for (_, path) in workload_link_pins(pin_dir)? {
        let Some(link) = pinned_link(config, &path)? else {
            continue;
        };
        let replaced = SchedClassifierLink::try_from(link)
            .map_err(|err| link_error(config, &path, err))
            .and_then(|link| {
                program
                    .attach_to_link(link)
                    .map_err(program_error(PROG_TC_WORKLOAD, config))
            });
        if let Err(err) = replaced {
            // The device is gone (its link defunct): the next sync hooks it again if it returns.
            tracing::debug!(pin = %path.display(), "dropping a workload link: {err}");
            remove_file_if_exists(&path)?;
        }
    }
    Ok(())
}

fn sum_counters(counters: &PerCpuArray<MapData, u64>) -> Result<Stats, aya::maps::MapError> {
    let mut values = Vec::with_capacity(Counter::ALL.len());
    for counter in Counter::ALL {
        let per_cpu = counters.get(&(counter as u32), 0)?;
        values.push(per_cpu.iter().sum());
    }
    Ok(Stats { values })
}

/// Size of the embedded eBPF object (used by `shoal version`).
pub fn object_size() -> usize {
    EBPF_OBJECT.len()
}

/// Errors of the dataplane API; each names the interface or object involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object for {interface}: {source}")]
    Load {
        interface: String,
        source: Box<aya::EbpfError>,
    },
    /// Loading (verifying) or attaching a program; the message includes the verifier log.
    #[error("program {program} on {interface}: {source}")]
    Program {
        program: &'static str,
        interface: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("link {path} on {interface}: {message}")]
    Link {
        interface: String,
        path: PathBuf,
        message: String,
    },
    #[error("map {map} of {interface}: {source}")]
    Map {
        map: &'static str,
        interface: String,
        source: Box<aya::maps::MapError>,
    },
    #[error("interface {interface}: {message}")]
    Interface { interface: String, message: String },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A 48-bit MAC address, printed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts
                .next()
                .filter(|part| part.len() == 2)
                .ok_or_else(|| Error::InvalidMac(text.to_string()))?;
            *byte =
                u8::from_str_radix(part, 16).map_err(|_| Error::InvalidMac(text.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(Error::InvalidMac(text.to_string()));
        }
        Ok(Self(bytes))
    }
}

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

/// How the XDP program was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP, used when the driver refused native mode.
    Generic,
    /// Decapsulation runs on TC, no XDP program.
    Tc,
    /// Taken over from a pinned link of an earlier process.
    Inherited,
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
    /// Install the kernel route and neighbour of each overlay route (see [`Dataplane::set_route`]).
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

/// Where packets for one remote subnet go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Underlay address of the node leasing the subnet.
    pub underlay_ip: Ipv4Addr,
    /// That node's VTEP MAC (flannel's `VtepMAC`).
    pub vtep_mac: MacAddr,
    pub backend: Backend,
}

impl RouteTarget {
    fn to_raw(self) -> RawTarget {
        RawTarget {
            underlay_ip: self.underlay_ip.octets(),
            vtep_mac: self.vtep_mac.0,
            backend: self.backend as u8,
            _pad: 0,
        }
    }

    fn from_raw(raw: RawTarget) -> Option<Self> {
        Some(Self {
            underlay_ip: Ipv4Addr::from(raw.underlay_ip),
            vtep_mac: MacAddr(raw.vtep_mac),
            backend: Backend::from_u8(raw.backend)?,
        })
    }
}

/// A local workload the TC decapsulation delivers to directly, past the kernel's forwarding path
/// and bridge (used only while the kernel's FIB still resolves `address` to `via_ifindex` and
/// `mac`; anything else goes the kernel's way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    /// The device the kernel routes `address` to (a bridge, or a routed veth).
    pub via_ifindex: u32,
    /// The device frames for it leave on (the bridge port, or `via_ifindex`).
    pub port_ifindex: u32,
    /// `port_ifindex` is a veth: the packet enters the workload's namespace directly.
    pub port_is_veth: bool,
}

impl Endpoint {
    fn to_raw(self) -> LocalEndpoint {
        LocalEndpoint {
            port_ifindex: self.port_ifindex,
            via_ifindex: self.via_ifindex,
            mac: self.mac.0,
            peer: u8::from(self.port_is_veth),
            _pad: 0,
        }
    }

    fn from_raw(address: [u8; 4], raw: LocalEndpoint) -> Self {
        Self {
            address: Ipv4Addr::from(address),
            mac: MacAddr(raw.mac),
            via_ifindex: raw.via_ifindex,
            port_ifindex: raw.port_ifindex,
            port_is_veth: raw.peer != 0,
        }
    }
}

impl From<system::FoundEndpoint> for Endpoint {
    fn from(found: system::FoundEndpoint) -> Self {
        Self {
            address: found.address,
            mac: found.mac,
            via_ifindex: found.via_ifindex,
            port_ifindex: found.port_ifindex,
            port_is_veth: found.port_is_veth,
        }
    }
}

/// Counter totals over all CPUs (`Debug` lists the non-zero ones by name).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stats {
    values: Vec<u64>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .filter(|(_, value)| *value != 0)
                    .map(|(counter, value)| (counter.name(), value)),
            )
            .finish()
    }
}

impl Stats {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values.get(counter as usize).copied().unwrap_or(0)
    }

    /// Every counter with its stable name.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL
            .iter()
            .map(|&counter| (counter, self.get(counter)))
    }

    /// Sum of all `drop_*` counters.
    pub fn drops(&self) -> u64 {
        self.iter()
            .filter(|(counter, _)| counter.name().starts_with("drop_"))
            .map(|(_, value)| value)
            .sum()
    }
}

const LINK_EGRESS: &str = "link_tc_egress";
const LINK_INGRESS_XDP: &str = "link_xdp_ingress";
const LINK_INGRESS_TC: &str = "link_tc_ingress";

/// A loaded, attached dataplane on one interface.
pub struct Dataplane {
    config: Config,
    interface: InterfaceInfo,
    vtep_mac: MacAddr,
    attach_mode: AttachMode,
    routes: LpmTrie<MapData, [u8; 4], RawTarget>,
    workloads: WorkloadMaps,
    counters: PerCpuArray<MapData, u64>,
    // Keeps the programs loaded while this handle lives (the links keep them attached after).
    _ebpf: Ebpf,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("config", &self.config)
            .field("vtep_mac", &self.vtep_mac)
            .field("attach_mode", &self.attach_mode)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the programs and attaches them to `config.interface`, or takes over the pinned
    /// dataplane a previous process left on it (same maps, programs replaced atomically).
    pub fn load_or_attach(config: Config) -> Result<Self> {
        let interface = system::interface_info(&config.interface)?;
        let vtep_mac = config.vtep_mac.unwrap_or(interface.mac);
        let pin_dir = config.pin_dir();
        system::ensure_bpffs(&config.pin_root)?;
        std::fs::create_dir_all(&pin_dir).map_err(|source| Error::Io {
            context: format!("creating pin directory {}", pin_dir.display()),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(EBPF_OBJECT)
            .map_err(|source| Error::Load {
                interface: config.interface.clone(),
                source: Box::new(source),
            })?;
        let name = config.interface.clone();
        let map_error = |map: &'static str| {
            let name = &name;
            move |source| map_error(map, name, source)
        };
        let mut config_map: Array<MapData, DataplaneConfig> =
            Array::try_from(take_map(&mut ebpf, CONFIG_MAP, &name)?)
                .map_err(map_error(CONFIG_MAP))?;
        config_map
            .set(0, raw_config(&config, &interface, vtep_mac), 0)
            .map_err(map_error(CONFIG_MAP))?;
        let routes = LpmTrie::try_from(take_map(&mut ebpf, ROUTES_MAP, &name)?)
            .map_err(map_error(ROUTES_MAP))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP, &name)?)
            .map_err(map_error(COUNTERS_MAP))?;
        let workloads = WorkloadMaps::from_object(&mut ebpf, &name)?;
        attach_egress(&mut ebpf, &config, &pin_dir)?;
        pin_workload_program(&mut ebpf, &config, &pin_dir)?;
        let hook = match config.decap_hook {
            DecapHook::Auto => {
                DecapHook::Auto.for_device_kind(system::link_kind(&config.interface)?.as_deref())
            }
            hook => hook,
        };
        let attach_mode = match hook {
            DecapHook::Tc => attach_tc_ingress(&mut ebpf, &config, &pin_dir)?,
            DecapHook::Xdp | DecapHook::Auto => {
                let mode = attach_xdp_ingress(&mut ebpf, &config, &pin_dir)?;
                if system::enable_gro(&config.interface)? {
                    tracing::info!(interface = %config.interface, "turned GRO on behind XDP");
                }
                mode
            }
        };
        tracing::info!(
            interface = %config.interface,
            pins = %pin_dir.display(),
            ?attach_mode,
            %vtep_mac,
            "dataplane attached"
        );
        Ok(Self {
            config,
            interface,
            vtep_mac,
            attach_mode,
            routes,
            workloads,
            counters,
            _ebpf: ebpf,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The VTEP MAC peers must use for this node (flannel's `VtepMAC` in the lease).
    pub fn vtep_mac(&self) -> MacAddr {
        self.vtep_mac
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    /// The MTU workloads must use with `backend`: the underlay MTU minus the encapsulation.
    pub fn overlay_mtu(&self, backend: Backend) -> u32 {
        self.interface.mtu - backend.overhead()
    }

    /// Adds or replaces the route for a remote subnet. The map entry is replaced atomically;
    /// with `manage_kernel_routes`, the kernel route (via the subnet's network address, on-link,
    /// MTU = underlay - overhead) and its permanent neighbour are replaced too.
    pub fn set_route(&mut self, subnet: Ipv4Network, target: RouteTarget) -> Result<()> {
        let key = route_key(subnet);
        self.routes
            .insert(&key, target.to_raw(), 0)
            .map_err(|source| self.map_error(ROUTES_MAP, source))?;
        if self.config.manage_kernel_routes {
            self.kernel_route(subnet, target).install()?;
        }
        tracing::debug!(interface = %self.config.interface, %subnet, ?target, "route set");
        Ok(())
    }

    /// Removes the route for a remote subnet (a missing route is not an error).
    pub fn remove_route(&mut self, subnet: Ipv4Network) -> Result<()> {
        if self.config.manage_kernel_routes {
            let target = RouteTarget {
                underlay_ip: Ipv4Addr::UNSPECIFIED,
                vtep_mac: self.vtep_mac,
                backend: Backend::Vxlan,
            };
            self.kernel_route(subnet, target).remove()?;
        }
        match self.routes.remove(&route_key(subnet)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(self.map_error(ROUTES_MAP, source)),
        }
    }

    /// Every route in the map.
    pub fn routes(&self) -> Result<Vec<(Ipv4Network, RouteTarget)>> {
        let mut routes = Vec::new();
        for entry in self.routes.iter() {
            let (key, raw) = entry.map_err(|source| self.map_error(ROUTES_MAP, source))?;
            let prefix = key.prefix_len() as u8;
            let Ok(subnet) = Ipv4Network::new(Ipv4Addr::from(key.data()), prefix) else {
                continue;
            };
            if let Some(target) = RouteTarget::from_raw(raw) {
                routes.push((subnet, target));
            }
        }
        Ok(routes)
    }

    /// Registers (or replaces) a local workload for direct delivery after TC decapsulation.
    pub fn set_endpoint(&mut self, endpoint: Endpoint) -> Result<()> {
        self.workloads
            .endpoints
            .insert(endpoint.address.octets(), endpoint.to_raw(), 0)
            .map_err(|source| self.map_error(ENDPOINTS_MAP, source))
    }

    /// Forgets a local workload (a missing one is not an error).
    pub fn remove_endpoint(&mut self, address: Ipv4Addr) -> Result<()> {
        remove_key(&mut self.workloads.endpoints, &address.octets())
            .map_err(|source| self.map_error(ENDPOINTS_MAP, source))
    }

    /// Every registered local workload.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut endpoints = Vec::new();
        for entry in self.workloads.endpoints.iter() {
            let (address, raw) = entry.map_err(|source| self.map_error(ENDPOINTS_MAP, source))?;
            endpoints.push(Endpoint::from_raw(address, raw));
        }
        Ok(endpoints)
    }

    /// Makes the registered workloads those of the local subnet the kernel knows now (resolved
    /// neighbour entries, with their bridge port from the bridge's forwarding database),
    /// whatever created them (a Docker or CNI bridge, a routed veth, `shoal run`). Returns how
    /// many are registered. Call it when workloads come and go, or periodically: a workload not
    /// (or no longer) registered still works, through the kernel's forwarding path.
    pub fn sync_endpoints(&mut self) -> Result<usize> {
        let pin_dir = self.config.pin_dir();
        let count = self
            .workloads
            .reconcile(self.config.local_subnet, &pin_dir)?;
        tracing::debug!(interface = %self.config.interface, count, "endpoints synced");
        Ok(count)
    }

    /// Counter totals over all CPUs.
    pub fn stats(&self) -> Result<Stats> {
        sum_counters(&self.counters).map_err(|source| self.map_error(COUNTERS_MAP, source))
    }

    /// Detaches the programs, removes the kernel routes this dataplane installed and every pin.
    pub fn detach(self) -> Result<()> {
        if self.config.manage_kernel_routes {
            for (subnet, target) in self.routes()? {
                self.kernel_route(subnet, target).remove()?;
            }
        }
        let pin_dir = self.config.pin_dir();
        // Unpinning drops the kernel's last reference to the links: the programs detach.
        remove_pins(&pin_dir)?;
        for attach_type in [TcAttachType::Egress, TcAttachType::Ingress] {
            detach_clsact(&self.config, attach_type)?;
        }
        tracing::info!(interface = %self.config.interface, "dataplane detached");
        Ok(())
    }

    /// The kernel route steering `subnet` to the underlay device. Its permanent neighbour
    /// carries the peer's VTEP MAC, as flannel's does (the program writes the inner MACs itself);
    /// the udp backend has no VTEP MAC, so this node's stands in.
    fn kernel_route(&self, subnet: Ipv4Network, target: RouteTarget) -> KernelRoute<'_> {
        let neighbour_mac = match target.backend {
            Backend::Vxlan if target.vtep_mac.0 != [0; 6] => target.vtep_mac,
            _ => self.vtep_mac,
        };
        KernelRoute {
            interface: &self.config.interface,
            subnet,
            neighbour_mac,
            mtu: self.overlay_mtu(target.backend),
            source: self.config.route_source,
        }
    }

    fn map_error(&self, map: &'static str, source: aya::maps::MapError) -> Error {
        map_error(map, &self.config.interface, source)
    }
}

fn route_key(subnet: Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(subnet.prefix()), subnet.network().octets())
}

fn raw_config(config: &Config, interface: &InterfaceInfo, vtep_mac: MacAddr) -> DataplaneConfig {
    DataplaneConfig {
        underlay_ip: config.underlay_ip.octets(),
        local_subnet: config.local_subnet.network().octets(),
        local_mask: config.local_subnet.mask().octets(),
        underlay_ifindex: interface.index,
        underlay_mtu: interface.mtu,
        vni: config.vni,
        vxlan_port: config.vxlan_port.to_be_bytes(),
        udp_port: config.udp_port.to_be_bytes(),
        vtep_mac: vtep_mac.0,
        underlay_mac: interface.mac.0,
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str, interface: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| Error::Interface {
        interface: interface.to_string(),
        message: format!("the eBPF object has no map {name}"),
    })
}

fn program_error(
    program: &'static str,
    config: &Config,
) -> impl FnOnce(aya::programs::ProgramError) -> Error + use<> {
    let interface = config.interface.clone();
    move |source| Error::Program {
        program,
        interface,
        source: Box::new(source),
    }
}

fn link_error(config: &Config, path: &Path, message: impl fmt::Display) -> Error {
    Error::Link {
        interface: config.interface.clone(),
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The link pinned at `path`, if any.
fn pinned_link(config: &Config, path: &Path) -> Result<Option<FdLink>> {
    if !path.exists() {
        return Ok(None);
    }
    let link = PinnedLink::from_pin(path).map_err(|err| link_error(config, path, err))?;
    Ok(Some(FdLink::from(link)))
}

fn pin_link(config: &Config, link: FdLink, path: &Path) -> Result<()> {
    link.pin(path)
        .map(drop)
        .map_err(|err| link_error(config, path, err))
}

fn load_classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    config: &Config,
) -> Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Interface {
            interface: config.interface.clone(),
            message: format!("the eBPF object has no program {name}"),
        })?
        .try_into()
        .map_err(program_error(name, config))?;
    program.load().map_err(program_error(name, config))?;
    Ok(program)
}

/// Attaches (or atomically replaces, in the pinned link or the clsact filter) a TC program.
/// Returns whether an earlier attachment was taken over.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    attach_type: TcAttachType,
    config: &Config,
    link_path: &Path,
) -> Result<bool> {
    let program = load_classifier(ebpf, name, config)?;
    if let Some(link) = pinned_link(config, link_path)? {
        let link = SchedClassifierLink::try_from(link)
            .map_err(|err| link_error(config, link_path, err))?;
        program
            .attach_to_link(link)
            .map_err(program_error(name, config))?;
        return Ok(true);
    }
    match config.tc_attach {
        TcAttach::Tcx => attach_tcx(program, name, attach_type, config, link_path),
        TcAttach::Clsact => attach_clsact(program, name, attach_type, config),
        TcAttach::Auto => match attach_tcx(program, name, attach_type, config, link_path) {
            Ok(taken_over) => Ok(taken_over),
            Err(tcx_error) => {
                tracing::warn!(
                    interface = %config.interface,
                    "TCX refused ({tcx_error}); attaching {name} to a clsact qdisc"
                );
                attach_clsact(program, name, attach_type, config)
            }
        },
    }
}

fn attach_tcx(
    program: &mut SchedClassifier,
    name: &'static str,
    attach_type: TcAttachType,
    config: &Config,
    link_path: &Path,
) -> Result<bool> {
    let id = program
        .attach_with_options(
            &config.interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(program_error(name, config))?;
    let link = program.take_link(id).map_err(program_error(name, config))?;
    let link = FdLink::try_from(link).map_err(|err| link_error(config, link_path, err))?;
    pin_link(config, link, link_path)?;
    // TCX won: a clsact filter of an earlier attachment would run as well.
    detach_clsact(config, attach_type)?;
    Ok(false)
}

/// Priority and handle of shoal's clsact filters (one per direction).
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Attaches a cls_bpf filter to the clsact qdisc (added if missing), or replaces the filter an
/// earlier process left there in place.
fn attach_clsact(
    program: &mut SchedClassifier,
    name: &'static str,
    attach_type: TcAttachType,
    config: &Config,
) -> Result<bool> {
    match aya::programs::tc::qdisc_add_clsact(&config.interface) {
        Ok(()) => {}
        Err(aya::programs::tc::TcError::NetlinkError(err))
            if err.raw_os_error() == Some(libc::EEXIST) => {}
        Err(err) => {
            return Err(Error::Interface {
                interface: config.interface.clone(),
                message: format!("adding a clsact qdisc: {err}"),
            });
        }
    }
    let existing = clsact_filter_of(config, attach_type, name)?;
    let id = if existing {
        let link = clsact_link(config, attach_type)?;
        program
            .attach_to_link(link)
            .map_err(program_error(name, config))?
    } else {
        let options = NlOptions {
            priority: CLSACT_PRIORITY,
            handle: CLSACT_HANDLE,
            classid: None,
        };
        program
            .attach_with_options(
                &config.interface,
                attach_type,
                TcAttachOptions::Netlink(options),
            )
            .map_err(program_error(name, config))?
    };
    let link = program.take_link(id).map_err(program_error(name, config))?;
    // Dropping the link would delete the filter; it must outlive this process.
    std::mem::forget(link);
    Ok(existing)
}

fn clsact_link(config: &Config, attach_type: TcAttachType) -> Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        &config.interface,
        attach_type,
        CLSACT_PRIORITY,
        CLSACT_HANDLE,
        None,
    )
    .map_err(|source| Error::Io {
        context: format!("finding the clsact filter on {}", config.interface),
        source,
    })
}

/// Whether shoal's clsact filter is on the interface in that direction (named `name`).
fn clsact_filter_of(config: &Config, attach_type: TcAttachType, name: &str) -> Result<bool> {
    let direction = match attach_type {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    // Without a clsact qdisc `tc` finds nothing to show, which is an answer too.
    Ok(system::tc_filters(&config.interface, direction)
        .map(|filters| filters.contains(name))
        .unwrap_or(false))
}

/// Deletes shoal's clsact filter in that direction, if there is one.
fn detach_clsact(config: &Config, attach_type: TcAttachType) -> Result<()> {
    let names = [PROG_TC_EGRESS, PROG_TC_INGRESS];
    let mut ours = false;
    for name in names {
        ours |= clsact_filter_of(config, attach_type, name)?;
    }
    if !ours {
        return Ok(());
    }
    clsact_link(config, attach_type)?
        .detach()
        .map_err(program_error(PROG_TC_EGRESS, config))
}

fn attach_egress(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<()> {
    attach_tc(
        ebpf,
        PROG_TC_EGRESS,
        TcAttachType::Egress,
        config,
        &pin_dir.join(LINK_EGRESS),
    )
    .map(drop)
}

fn attach_tc_ingress(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<AttachMode> {
    let inherited = attach_tc(
        ebpf,
        PROG_TC_INGRESS,
        TcAttachType::Ingress,
        config,
        &pin_dir.join(LINK_INGRESS_TC),
    )?;
    // Switching hooks: the XDP link of an earlier configuration goes.
    remove_file_if_exists(&pin_dir.join(LINK_INGRESS_XDP))?;
    Ok(if inherited {
        AttachMode::Inherited
    } else {
        AttachMode::Tc
    })
}

fn attach_xdp_ingress(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<AttachMode> {
    let link_path = pin_dir.join(LINK_INGRESS_XDP);
    let program: &mut Xdp = ebpf
        .program_mut(PROG_XDP_INGRESS)
        .ok_or_else(|| Error::Interface {
            interface: config.interface.clone(),
            message: format!("the eBPF object has no program {PROG_XDP_INGRESS}"),
        })?
        .try_into()
        .map_err(program_error(PROG_XDP_INGRESS, config))?;
    program
        .load()
        .map_err(program_error(PROG_XDP_INGRESS, config))?;
    if let Some(link) = pinned_link(config, &link_path)? {
        let link = XdpLink::try_from(link).map_err(|err| link_error(config, &link_path, err))?;
        program
            .attach_to_link(link)
            .map_err(program_error(PROG_XDP_INGRESS, config))?;
        return Ok(AttachMode::Inherited);
    }
    let (id, mode) = match program.attach(&config.interface, XdpMode::Driver) {
        Ok(id) => (id, AttachMode::Native),
        Err(native_error) => {
            tracing::warn!(
                interface = %config.interface,
                "native XDP refused ({native_error}); falling back to generic XDP"
            );
            let id = program
                .attach(&config.interface, XdpMode::Skb)
                .map_err(program_error(PROG_XDP_INGRESS, config))?;
            (id, AttachMode::Generic)
        }
    };
    let link = program
        .take_link(id)
        .map_err(program_error(PROG_XDP_INGRESS, config))?;
    let link = FdLink::try_from(link).map_err(|err| link_error(config, &link_path, err))?;
    pin_link(config, link, &link_path)?;
    remove_file_if_exists(&pin_dir.join(LINK_INGRESS_TC))?;
    detach_clsact(config, TcAttachType::Ingress)?;
    Ok(mode)
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("removing pin {}", path.display()),
            source,
        }),
    }
}

/// Removes every pin in `dir`, then `dir` itself.
fn remove_pins(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                context: format!("listing pins in {}", dir.display()),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        remove_file_if_exists(&entry.path())?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("removing pin directory {}", dir.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_round_trip() {
        let mac: MacAddr = "02:0a:ff:00:01:9c".parse().expect("valid");
        assert_eq!(mac.0, [0x02, 0x0a, 0xff, 0x00, 0x01, 0x9c]);
        assert_eq!(mac.to_string(), "02:0a:ff:00:01:9c");
        assert!("02:0a:ff:00:01".parse::<MacAddr>().is_err());
        assert!("02:0a:ff:00:01:9c:00".parse::<MacAddr>().is_err());
        assert!("02:0a:ff:00:01:zz".parse::<MacAddr>().is_err());
    }

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

    #[test]
    fn endpoints_survive_the_map_encoding() {
        let endpoint = Endpoint {
            address: Ipv4Addr::new(10, 244, 1, 2),
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            via_ifindex: 3,
            port_ifindex: 9,
            port_is_veth: true,
        };
        assert_eq!(
            Endpoint::from_raw(endpoint.address.octets(), endpoint.to_raw()),
            endpoint
        );
    }

    #[test]
    fn route_targets_survive_the_map_encoding() {
        let target = RouteTarget {
            underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            backend: Backend::Udp,
        };
        assert_eq!(RouteTarget::from_raw(target.to_raw()), Some(target));
    }
}

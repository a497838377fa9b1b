//! The handle of a loaded, attached dataplane: attaching or taking over, routes, endpoints,
//! counters, detaching.
use std::{fmt, net::Ipv4Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray},
    programs::TcAttachType,
};
use ipnetwork::Ipv4Network;
use shoal_dataplane_common::{
    Backend, CONFIG_MAP, COUNTERS_MAP, DataplaneConfig, ENDPOINTS_MAP, PROG_TC_EGRESS,
    PROG_TC_INGRESS, PROG_TC_WORKLOAD, PROG_XDP_INGRESS, ROUTES_MAP, RouteTarget as RawTarget,
};

use crate::{
    AttachMode, Config, DecapHook, EBPF_OBJECT, Endpoint, Error, MacAddr, ProgramRuns, Result,
    RouteTarget, Stats,
    attach::{attach_egress, attach_tc_ingress, attach_xdp_ingress},
    clsact::detach_clsact,
    endpoints::{WorkloadMaps, remove_key},
    error::{map_error, program_error},
    interface::{InterfaceInfo, enable_gro, interface_info, link_kind},
    pins::{ensure_bpffs, remove_pins},
    routes::{KernelRoute, route_key},
    stats::sum_counters,
    workload_hooks::pin_workload_program,
};

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
    ebpf: Ebpf,
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
        let interface = interface_info(&config.interface)?;
        let vtep_mac = config.vtep_mac.unwrap_or(interface.mac);
        let pin_dir = config.pin_dir();
        ensure_bpffs(&config.pin_root)?;
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
                DecapHook::Auto.for_device_kind(link_kind(&config.interface)?.as_deref())
            }
            hook => hook,
        };
        let attach_mode = match hook {
            DecapHook::Tc => attach_tc_ingress(&mut ebpf, &config, &pin_dir)?,
            DecapHook::Xdp | DecapHook::Auto => {
                let mode = attach_xdp_ingress(&mut ebpf, &config, &pin_dir)?;
                if enable_gro(&config.interface)? {
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
            ebpf,
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

    /// Run counts and times of the programs this handle loaded (the ones the links run), as the
    /// kernel counted them since the load; zero unless BPF run statistics are on
    /// ([`crate::enable_program_stats`]).
    pub fn program_runs(&self) -> Result<Vec<ProgramRuns>> {
        let mut runs = Vec::new();
        let names = [
            PROG_TC_WORKLOAD,
            PROG_TC_EGRESS,
            PROG_TC_INGRESS,
            PROG_XDP_INGRESS,
        ];
        for name in names {
            // A program this configuration does not use was never loaded.
            let Some(program) = self.ebpf.program(name).filter(|p| p.fd().is_ok()) else {
                continue;
            };
            let info = program.info().map_err(program_error(name, &self.config))?;
            runs.push(ProgramRuns {
                program: name.to_string(),
                runs: info.run_count(),
                run_time: info.run_time(),
            });
        }
        Ok(runs)
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
            index: self.interface.index,
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

pub(crate) fn take_map(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or_else(|| Error::Interface {
        interface: interface.to_string(),
        message: format!("the eBPF object has no map {name}"),
    })
}

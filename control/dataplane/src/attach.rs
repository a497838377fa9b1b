//! Loading the programs and attaching them to the underlay device: TC egress, and the ingress
//! hook (XDP or TC), each through a pinned link a later process takes over atomically.
use std::{fmt, path::Path};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use shoal_dataplane_common::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS};

use crate::{
    Config, Error, Result, TcAttach,
    clsact::{attach_clsact, detach_clsact},
    error::program_error,
    pins::remove_file_if_exists,
};

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

pub(crate) const LINK_EGRESS: &str = "link_tc_egress";
pub(crate) const LINK_INGRESS_XDP: &str = "link_xdp_ingress";
pub(crate) const LINK_INGRESS_TC: &str = "link_tc_ingress";

pub(crate) fn link_error(config: &Config, path: &Path, message: impl fmt::Display) -> Error {
    Error::Link {
        interface: config.interface.clone(),
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The link pinned at `path`, if any.
pub(crate) fn pinned_link(config: &Config, path: &Path) -> Result<Option<FdLink>> {
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

pub(crate) fn load_classifier<'a>(
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

pub(crate) fn attach_egress(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<()> {
    attach_tc(
        ebpf,
        PROG_TC_EGRESS,
        TcAttachType::Egress,
        config,
        &pin_dir.join(LINK_EGRESS),
    )
    .map(drop)
}

pub(crate) fn attach_tc_ingress(
    ebpf: &mut Ebpf,
    config: &Config,
    pin_dir: &Path,
) -> Result<AttachMode> {
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

pub(crate) fn attach_xdp_ingress(
    ebpf: &mut Ebpf,
    config: &Config,
    pin_dir: &Path,
) -> Result<AttachMode> {
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

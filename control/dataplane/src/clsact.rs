//! TC programs as cls_bpf filters on a clsact qdisc, for kernels without TCX: attaching them,
//! finding and deleting shoal's.
use aya::programs::{
    SchedClassifier, TcAttachType,
    links::Link,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use shoal_dataplane_common::{PROG_TC_EGRESS, PROG_TC_INGRESS};
use shoal_netlink::TcDirection;

use crate::{
    Config, Error, Result,
    error::{netlink_error, program_error},
};

/// Priority and handle of shoal's clsact filters (one per direction).
const CLSACT_PRIORITY: u16 = 1;
const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Attaches a cls_bpf filter to the clsact qdisc (added if missing), or replaces the filter an
/// earlier process left there in place.
pub(crate) fn attach_clsact(
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
        TcAttachType::Ingress => TcDirection::Ingress,
        _ => TcDirection::Egress,
    };
    let interface = config.interface.clone();
    let filters = shoal_netlink::block_on(|netlink| async move {
        match netlink.link_by_name(&interface).await? {
            Some(link) => netlink.bpf_filters(link.index, direction).await,
            None => Ok(Vec::new()),
        }
    })
    .map_err(netlink_error(&config.interface))?;
    Ok(filters
        .iter()
        .any(|filter| filter.name.as_deref() == Some(name)))
}

/// Deletes shoal's clsact filter in that direction, if there is one.
pub(crate) fn detach_clsact(config: &Config, attach_type: TcAttachType) -> Result<()> {
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

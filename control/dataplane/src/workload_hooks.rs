//! The workload-ingress program on the devices local workloads hang off: pinned once, hooked
//! (TCX, one pinned link per device) and unhooked as workloads come and go.
use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use shoal_dataplane_common::PROG_TC_WORKLOAD;

use crate::{
    Config, Error, Result,
    attach::{link_error, load_classifier, pinned_link},
    error::program_error,
    interface::interface_name,
    pins::remove_file_if_exists,
};

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
pub(crate) fn hook_workload_devices(pin_dir: &Path, devices: &[u32]) -> Result<()> {
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
            // As an error field, so the log line carries the error's causes too.
            Err(err) => tracing::warn!(
                ifindex,
                error = &err as &dyn std::error::Error,
                "workload device keeps the kernel path"
            ),
        }
    }
    Ok(())
}

fn hook_workload_device(pin_dir: &Path, ifindex: u32, link_path: &Path) -> Result<String> {
    let device = interface_name(ifindex)?;
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
pub(crate) fn pin_workload_program(ebpf: &mut Ebpf, config: &Config, pin_dir: &Path) -> Result<()> {
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
            tracing::debug!(
                pin = %path.display(),
                error = &err as &dyn std::error::Error,
                "dropping a workload link"
            );
            remove_file_if_exists(&path)?;
        }
    }
    Ok(())
}

//! The errors of the dataplane API.
use std::{io, path::PathBuf};

use crate::Config;

/// Errors of the dataplane API; each names the interface or object involved. A message does not
/// repeat its source: callers print the whole chain (anyhow's `{:#}`, or a chain printer in log
/// lines).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object for {interface}")]
    Load {
        interface: String,
        source: Box<aya::EbpfError>,
    },
    /// Loading (verifying) or attaching a program; the source's message includes the verifier
    /// log.
    #[error("program {program} on {interface}")]
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
    #[error("map {map} of {interface}")]
    Map {
        map: &'static str,
        interface: String,
        source: Box<aya::maps::MapError>,
    },
    #[error("interface {interface}: {message}")]
    Interface { interface: String, message: String },
    /// A kernel networking request (links, routes, neighbours, filters).
    #[error("{context}")]
    Netlink {
        /// The interface, or what else the request was about.
        context: String,
        source: Box<shoal_netlink::NetlinkError>,
    },
    #[error("{context}")]
    Io { context: String, source: io::Error },
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a program error to [`Error::Program`], naming the program and the interface.
pub(crate) fn program_error(
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

/// An error of map `map` of the dataplane at `place` (its interface, or its pin directory).
pub(crate) fn map_error(map: &'static str, place: &str, source: aya::maps::MapError) -> Error {
    Error::Map {
        map,
        interface: place.to_string(),
        source: Box::new(source),
    }
}

/// A failed kernel request about `context` (an interface, usually).
pub(crate) fn netlink_error(
    context: &str,
) -> impl FnOnce(shoal_netlink::NetlinkError) -> Error + use<> {
    let context = context.to_string();
    move |source| Error::Netlink {
        context,
        source: Box::new(source),
    }
}

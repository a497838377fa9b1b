//! The errors of the dataplane API.
use std::{error::Error as _, io, path::PathBuf};

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
    /// A kernel networking request (links, routes, neighbours, filters). The message carries
    /// the request's whole chain of causes, which is why the error is not exposed as a source:
    /// users print this error with `{}`.
    #[error("{context}: {}", chain(error))]
    Netlink {
        /// The interface, or what else the request was about.
        context: String,
        error: Box<shoal_netlink::NetlinkError>,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("invalid MAC address {0:?}")]
    InvalidMac(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    move |error| Error::Netlink {
        context,
        error: Box::new(error),
    }
}

/// `error` and its causes, `: `-separated.
fn chain(error: &shoal_netlink::NetlinkError) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}

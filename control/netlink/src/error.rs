//! The errors of kernel requests, classified by the errno the kernel answered.
use rtnetlink::Error as RtnetlinkError;

/// A failed kernel request. Messages name the request only: the kernel's answer (the errno) is
/// the error's source, printed once with the rest of the chain; the variant classifies it.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("starting the runtime for a blocking netlink request")]
    Runtime(#[source] std::io::Error),
    /// The object of the request does not exist (`ENOENT`, `ESRCH`, `ENODEV`).
    #[error("{action}")]
    NotFound {
        action: String,
        #[source]
        source: RtnetlinkError,
    },
    /// The object the request creates exists already (`EEXIST`).
    #[error("{action}")]
    Exists {
        action: String,
        #[source]
        source: RtnetlinkError,
    },
    #[error("{action}")]
    Request {
        action: String,
        #[source]
        source: RtnetlinkError,
    },
    #[error("no link named {0}")]
    NoLink(String),
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

impl NetlinkError {
    /// Whether the kernel answered that the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. } | Self::NoLink(_))
    }
}

/// Maps a failed request to its variant by errno; `action` says what was asked.
pub(crate) fn request(action: impl Into<String>) -> impl FnOnce(RtnetlinkError) -> NetlinkError {
    let action = action.into();
    move |source| match errno(&source) {
        Some(libc::ENOENT | libc::ESRCH | libc::ENODEV) => {
            NetlinkError::NotFound { action, source }
        }
        Some(libc::EEXIST) => NetlinkError::Exists { action, source },
        _ => NetlinkError::Request { action, source },
    }
}

/// The errno of a kernel error answer.
fn errno(error: &RtnetlinkError) -> Option<i32> {
    match error {
        RtnetlinkError::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

/// `result`, with an object already gone counted as success (for deletions).
pub(crate) fn ignore_missing(
    result: std::result::Result<(), RtnetlinkError>,
    action: String,
) -> Result<()> {
    match result.map_err(request(action)) {
        Err(NetlinkError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

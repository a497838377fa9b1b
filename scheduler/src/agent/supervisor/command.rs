//! What a unit's actor is told to do; sent by the supervisor and by the dependency links.

use tokio::sync::oneshot;

pub(super) enum Command {
    Start,
    /// Stop, and acknowledge on the sender once stopped.
    Stop(oneshot::Sender<()>),
}

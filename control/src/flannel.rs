//! `shoal flannel`: the overlay control plane, compatible with flanneld's flags and store layout.
use clap::Args;

#[derive(Debug, Args)]
pub struct FlannelArgs {
    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// etcd prefix of the network's config and leases.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
}

pub async fn run(_args: FlannelArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal flannel` is not implemented yet (issue #5: overlay control plane)")
}

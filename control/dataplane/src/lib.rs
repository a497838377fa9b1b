//! Userspace API of the eBPF overlay dataplane. The control plane calls this crate to load and
//! attach the programs, program routes and read counters.

/// The eBPF object built from `dataplane-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-dataplane"));

/// Errors of the dataplane API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
}

/// Parses the embedded object to check it is well-formed (used by `shoal version`).
pub fn object_size() -> usize {
    EBPF_OBJECT.len()
}

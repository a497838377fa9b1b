//! Builds the eBPF object with the `bpf` toolchain (Debian's rustc, linked by `cargo xtask setup`)
//! so that a plain `cargo build` produces it. The object lands in `$OUT_DIR/shoal-dataplane`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dataplane-ebpf");
    // Debian's rustc is a stable compiler; -Z build-std=core needs the bootstrap switch.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shoal-dataplane-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("bpf"),
    )
}

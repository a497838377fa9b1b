//! End-to-end scenarios driven against a cluster of qemu VMs booted by `cargo xtask vm-cluster`
//! (issue #7). The scenarios land here together with the VM cluster.

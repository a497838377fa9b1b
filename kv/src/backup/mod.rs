//! Backups in etcd's format: the state as a bbolt database with etcd 3.4's buckets
//! ([`etcd_format`] over [`bbolt`]), so `etcdctl snapshot save` against shoal writes what etcd
//! writes, and `shoal kv snapshot restore` ([`restore`]) seeds a new member from a snapshot of
//! shoal or of etcd.
pub mod bbolt;
pub mod etcd_format;
pub mod restore;

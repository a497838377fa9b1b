//! Queries of traffic control: whether a device has a clsact qdisc, and which BPF filters
//! (cls_bpf) are attached to its ingress or egress hook.
use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{DefaultNla, Nla, NlasIterator},
    packet_route::tc::{TcAttribute, TcMessage, TcOption},
};

use crate::{Netlink, Result, error::request};

/// `TCA_BPF_NAME`, the attribute of a cls_bpf filter that names its program.
const TCA_BPF_NAME: u16 = 7;

/// The hook of a clsact qdisc a filter is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcDirection {
    Ingress,
    Egress,
}

/// A cls_bpf filter as `tc filter show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// The name of the program (of an eBPF program attached by file descriptor; classic BPF
    /// bytecode has none).
    pub name: Option<String>,
}

impl Netlink {
    /// Whether link `index` has a clsact qdisc.
    pub async fn has_clsact(&self, index: u32) -> Result<bool> {
        let qdiscs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("listing qdiscs"))?;
        // The kernel dumps every device's qdiscs, whatever index the request names.
        Ok(qdiscs.iter().any(|qdisc| {
            u32::try_from(qdisc.header.index) == Ok(index) && kind(qdisc) == Some("clsact")
        }))
    }

    /// The BPF filters on the clsact `direction` hook of link `index` (none without clsact).
    pub async fn bpf_filters(&self, index: u32, direction: TcDirection) -> Result<Vec<BpfFilter>> {
        if !self.has_clsact(index).await? {
            return Ok(Vec::new());
        }
        let ifindex = i32::try_from(index).unwrap_or(i32::MAX);
        let get = self.handle.traffic_filter(ifindex).get();
        let get = match direction {
            TcDirection::Ingress => get.ingress(),
            TcDirection::Egress => get.egress(),
        };
        let filters: Vec<TcMessage> = get.execute().try_collect().await.map_err(request(
            format!("listing the {direction:?} filters of link {index}"),
        ))?;
        Ok(filters.iter().filter_map(bpf_filter).collect())
    }
}

fn kind(message: &TcMessage) -> Option<&str> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            TcAttribute::Kind(kind) => Some(kind.as_str()),
            _ => None,
        })
}

/// A cls_bpf filter instance (the dump's per-priority header entries have handle 0).
fn bpf_filter(message: &TcMessage) -> Option<BpfFilter> {
    let handle = u32::from(message.header.handle);
    if kind(message) != Some("bpf") || handle == 0 {
        return None;
    }
    let name = message
        .attributes
        .iter()
        .filter_map(|attribute| match attribute {
            TcAttribute::Options(options) => Some(options),
            _ => None,
        })
        .flatten()
        .find_map(|option| match option {
            TcOption::Other(nla) => bpf_name(nla),
            _ => None,
        });
    Some(BpfFilter {
        priority: (message.header.info >> 16) as u16,
        handle,
        name,
    })
}

/// The program name in cls_bpf options. netlink-packet-route does not parse them: they arrive
/// as one attribute holding the nested ones (or, should it learn to, as the name itself).
fn bpf_name(options: &DefaultNla) -> Option<String> {
    let mut value = vec![0; options.value_len()];
    options.emit_value(&mut value);
    if options.kind() == TCA_BPF_NAME {
        return Some(nul_terminated(&value));
    }
    NlasIterator::new(value.as_slice())
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == TCA_BPF_NAME)
        .map(|nla| nul_terminated(nla.value()))
}

fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_name_is_found_in_nested_cls_bpf_options() {
        // TCA_OPTIONS of an aya-attached filter as the kernel dumped it: TCA_BPF_NAME, ID, TAG,
        // FLAGS, FLAGS_GEN.
        let nested = [
            20, 0, 7, 0, b's', b'h', b'o', b'a', b'l', b'_', b't', b'c', b'_', b'e', b'g', b'r',
            b'e', b's', b's', 0, 8, 0, 11, 0, 34, 1, 0, 0, 12, 0, 10, 0, 144, 140, 34, 235, 4, 109,
            228, 130, 8, 0, 8, 0, 1, 0, 0, 0, 8, 0, 9, 0, 8, 0, 0, 0,
        ];
        let options = DefaultNla::new(2, nested.to_vec());
        assert_eq!(bpf_name(&options).as_deref(), Some("shoal_tc_egress"));
        let name = DefaultNla::new(TCA_BPF_NAME, b"shoal_tc_ingress\0".to_vec());
        assert_eq!(bpf_name(&name).as_deref(), Some("shoal_tc_ingress"));
        assert_eq!(
            bpf_name(&DefaultNla::new(2, vec![8, 0, 9, 0, 0, 0, 0, 0])),
            None
        );
    }
}

//! Queries of traffic control: whether a device has a clsact qdisc, and which BPF filters
//! (cls_bpf) are attached to its ingress or egress hook.
use futures::TryStreamExt;
use rtnetlink::{
    packet_core::Nla,
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
            TcOption::Other(nla) if nla.kind() == TCA_BPF_NAME => Some(nla_string(nla)),
            _ => None,
        });
    Some(BpfFilter {
        priority: (message.header.info >> 16) as u16,
        handle,
        name,
    })
}

/// The NUL-terminated string an attribute holds.
fn nla_string(nla: &impl Nla) -> String {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    let end = value
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

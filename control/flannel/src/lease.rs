//! Subnet leases exactly as flannel stores them: key `<prefix>/subnets/<ip>-<len>`, value a
//! JSON `LeaseAttrs` object, and the choice of a free subnet.
use std::{borrow::Cow, collections::HashSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use rand::seq::SliceRandom;
use serde::{Deserialize, Deserializer, Serialize, de::Visitor};

use super::config::NetworkConfig;

/// flannel's lease value (`lease.LeaseAttrs`). Field order and names match flannel's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// flannel writes `null` here for IPv4-only nodes.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// flannel's backend names are shared, not copied: a node keeps one per peer.
    #[serde(
        rename = "BackendType",
        default,
        deserialize_with = "backend_type",
        skip_serializing_if = "str::is_empty"
    )]
    pub backend_type: Cow<'static, str>,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<BackendData>,
    /// A dual-stack node's IPv6 backend data; kept as it came so nothing of a peer's lease is
    /// lost.
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<BackendData>,
}

/// The backend types flannel writes, which a lease's `BackendType` borrows
/// instead of allocating.
const BACKEND_TYPES: [&str; 6] = ["vxlan", "host-gw", "udp", "wireguard", "ipip", "ipsec"];

/// Reads `BackendType`, borrowing a known name.
fn backend_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Cow<'static, str>, D::Error> {
    struct Name;
    impl Visitor<'_> for Name {
        type Value = Cow<'static, str>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a backend type name")
        }

        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
            Ok(match BACKEND_TYPES.iter().find(|known| **known == name) {
                Some(known) => Cow::Borrowed(known),
                None => Cow::Owned(name.to_string()),
            })
        }
    }
    deserializer.deserialize_str(Name)
}

/// A backend's data as the JSON text it came in (flannel's `json.RawMessage`): checked to be
/// well-formed JSON, decoded only by the backend that reads it. A node follows every peer's
/// lease, so a decoded tree per peer would cost a node O(peers) allocations per list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackendData(Box<serde_json::value::RawValue>);

impl BackendData {
    /// `data` as JSON text.
    pub fn encode<T: Serialize + ?Sized>(data: &T) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(data).map(Self)
    }

    /// The JSON text, exactly as it was read or encoded.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// Decodes the data as `T`.
    pub fn decode<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(self.0.get())
    }
}

/// The same text is the same data: flannel writes a node's data the same way every time, and a
/// differently spelled equal value only costs the peer one more update.
impl PartialEq for BackendData {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

/// The `BackendData` of a vxlan lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanBackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl VxlanBackendData {
    /// The VTEP MAC as bytes, if it is a well-formed `aa:bb:cc:dd:ee:ff`.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        parse_mac(&self.vtep_mac)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC the way Go's `net.HardwareAddr` does.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One node's lease as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// The etcd lease holding the key; 0 for a reservation (a key without a lease).
    pub etcd_lease: i64,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }

    /// The vxlan backend data, if the lease carries well-formed vxlan data.
    pub fn vxlan_data(&self) -> Option<VxlanBackendData> {
        self.attrs.backend_data.as_ref()?.decode().ok()
    }
}

/// The key name of a subnet under `<prefix>/subnets/`: `10.5.34.0-24`.
pub fn subnet_key(subnet: Ipv4Network) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix())
}

/// Reads a subnet back from a full key or key name, as flannel does (`<ip>-<len>`, optionally
/// followed by `&<ipv6>-<len>` which IPv4-only nodes ignore).
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Network> {
    parse_subnet_key_bytes(key.as_bytes())
}

/// [`parse_subnet_key`] on a key's bytes as the store sends them: a node reads every peer's
/// key on every event, so without a UTF-8 pass or a copy first.
pub fn parse_subnet_key_bytes(key: &[u8]) -> Option<Ipv4Network> {
    let name = key.rsplit(|byte| *byte == b'/').next()?;
    let v4 = name.split(|byte| *byte == b'&').next()?;
    let dash = v4.iter().position(|byte| *byte == b'-')?;
    let (ip, len) = (&v4[..dash], &v4[dash + 1..]);
    let ip: Ipv4Addr = std::str::from_utf8(ip).ok()?.parse().ok()?;
    let len: u8 = std::str::from_utf8(len).ok()?.parse().ok()?;
    let subnet = Ipv4Network::new(ip, len).ok()?;
    (subnet.network() == ip).then_some(subnet)
}

/// How many free candidates flannel collects before picking one at random.
const CANDIDATES: usize = 100;

/// A random free subnet between SubnetMin and SubnetMax that overlaps no existing key (lease
/// or reservation), or `None` when the range is full.
pub fn pick_free_subnet(config: &NetworkConfig, taken: &[Ipv4Network]) -> Option<Ipv4Network> {
    let taken_exact: HashSet<Ipv4Network> = taken.iter().copied().collect();
    // A taken subnet of the candidates' own length overlaps one only by being it (the set
    // answers that); only the other lengths need the overlap scan, so picking stays linear in
    // the number of leases instead of leases times candidates.
    let other_lengths: Vec<Ipv4Network> = taken
        .iter()
        .filter(|other| other.prefix() != config.subnet_len)
        .copied()
        .collect();
    let step = 1u64 << (32 - config.subnet_len);
    let mut candidates = Vec::with_capacity(CANDIDATES);
    let base = u64::from(u32::from(config.subnet_min));
    // Start at a random offset so 1,000 nodes starting together do not all race for the first
    // free subnets; wrap around once.
    let count = (u64::from(u32::from(config.subnet_max)) - base) / step + 1;
    let start = rand::random::<u64>() % count;
    for index in 0..count {
        let slot = (start + index) % count;
        let ip = Ipv4Addr::from((base + slot * step) as u32);
        let Ok(subnet) = Ipv4Network::new(ip, config.subnet_len) else {
            continue;
        };
        if taken_exact.contains(&subnet)
            || other_lengths.iter().any(|other| overlaps(*other, subnet))
        {
            continue;
        }
        candidates.push(subnet);
        if candidates.len() >= CANDIDATES {
            break;
        }
    }
    candidates.choose(&mut rand::thread_rng()).copied()
}

/// Whether two subnets share an address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Whether `subnet` lies wholly inside `network`.
pub fn within(network: Ipv4Network, subnet: Ipv4Network) -> bool {
    subnet.prefix() >= network.prefix() && network.contains(subnet.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_serialize_like_flannel() {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 99, 0, 1),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(
                BackendData::encode(&VxlanBackendData {
                    vni: 1,
                    vtep_mac: "0a:58:0a:f4:01:01".into(),
                })
                .expect("serializable"),
            ),
            backend_v6_data: None,
        };
        let text = serde_json::to_string(&attrs).expect("serializable");
        assert_eq!(
            text,
            r#"{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:01"}}"#
        );
        let back: LeaseAttrs = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, attrs);
        let host_gw: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"10.99.0.2","BackendType":"host-gw"}"#)
                .expect("parses");
        assert_eq!(host_gw.backend_data, None);
    }

    #[test]
    fn every_field_of_flannels_lease_value_is_kept_as_it_came() {
        // A dual-stack vxlan lease as flanneld writes it, with backend data this version of
        // shoal does not know (a field more, nested values, odd spacing).
        let text = r#"{"PublicIP":"10.99.0.3","PublicIPv6":"fc00::3","BackendType":"vxlan","BackendData":{"VNI":4, "VtepMAC":"0a:58:0a:f4:01:03","Future":{"a":[1,2]}},"BackendV6Data":{"VNI":4,"VtepMAC":"0a:58:0a:f4:01:04"}}"#;
        let attrs: LeaseAttrs = serde_json::from_str(text).expect("parses");
        assert_eq!(attrs.public_ip, Ipv4Addr::new(10, 99, 0, 3));
        assert_eq!(attrs.public_ipv6, Some("fc00::3".parse().expect("IPv6")));
        assert_eq!(attrs.backend_type, "vxlan");
        let data = attrs.backend_data.as_ref().expect("BackendData");
        assert_eq!(
            data.text(),
            r#"{"VNI":4, "VtepMAC":"0a:58:0a:f4:01:03","Future":{"a":[1,2]}}"#
        );
        let vxlan: VxlanBackendData = data.decode().expect("vxlan data");
        assert_eq!(vxlan.vni, 4);
        assert_eq!(
            vxlan.mac_bytes(),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03])
        );
        assert_eq!(
            attrs.backend_v6_data.as_ref().map(BackendData::text),
            Some(r#"{"VNI":4,"VtepMAC":"0a:58:0a:f4:01:04"}"#)
        );
        // Written back, the value is the one read, field for field.
        let written = serde_json::to_string(&attrs).expect("serializable");
        assert_eq!(written, text);
    }

    #[test]
    fn backend_data_that_is_not_json_refuses_the_lease() {
        let text = r#"{"PublicIP":"10.99.0.3","BackendType":"vxlan","BackendData":{"VNI":4,}}"#;
        assert!(serde_json::from_str::<LeaseAttrs>(text).is_err());
    }

    #[test]
    fn subnet_keys_round_trip() {
        let subnet: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        assert_eq!(subnet_key(subnet), "10.5.34.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.5.34.0-24"),
            Some(subnet)
        );
        assert_eq!(parse_subnet_key("10.5.34.0-24&fc00::-64"), Some(subnet));
        assert_eq!(parse_subnet_key("10.5.34.1-24"), None);
        assert_eq!(parse_subnet_key("config"), None);
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("0a:58:0A:f4:01:ff").expect("valid");
        assert_eq!(format_mac(mac), "0a:58:0a:f4:01:ff");
        assert_eq!(parse_mac("0a:58:0a:f4:01"), None);
        assert_eq!(parse_mac("0a:58:0a:f4:01:02:03"), None);
    }

    #[test]
    fn free_subnets_avoid_taken_ones() {
        let config =
            NetworkConfig::parse(r#"{"Network": "10.5.0.0/28", "SubnetLen": 30}"#).expect("valid");
        // Slots: .4, .8, .12 (the first /30 is skipped).
        let taken: Vec<Ipv4Network> = vec![
            "10.5.0.4/30".parse().expect("cidr"),
            "10.5.0.12/30".parse().expect("cidr"),
        ];
        for _ in 0..20 {
            assert_eq!(
                pick_free_subnet(&config, &taken),
                Some("10.5.0.8/30".parse().expect("cidr"))
            );
        }
        let full: Vec<Ipv4Network> = vec!["10.5.0.0/28".parse().expect("cidr")];
        assert_eq!(pick_free_subnet(&config, &full), None);
    }

    #[test]
    fn a_taken_subnet_of_another_length_blocks_every_candidate_it_covers() {
        let config =
            NetworkConfig::parse(r#"{"Network": "10.5.0.0/28", "SubnetLen": 30}"#).expect("valid");
        // 10.5.0.8/29 covers the slots .8 and .12; only .4 is left.
        let taken: Vec<Ipv4Network> = vec!["10.5.0.8/29".parse().expect("cidr")];
        for _ in 0..20 {
            assert_eq!(
                pick_free_subnet(&config, &taken),
                Some("10.5.0.4/30".parse().expect("cidr"))
            );
        }
    }
}

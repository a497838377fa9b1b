//! `coreos.etcd2`, `coreos.fleet` and `coreos.flannel`: the store member (or the store a
//! worker uses), fleet and the overlay.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_yaml::{Mapping, Value};

use super::{Builder, Invalid, insert, invalid, list, string, string_list};
use crate::agent::cloud_config::schema::{Etcd2, Flannel, Fleet};

/// Maps `coreos.etcd2`; whether this node runs a store member.
pub(super) fn etcd2(
    etcd2: Option<&Etcd2>,
    started: bool,
    builder: &mut Builder,
) -> Result<bool, Invalid> {
    let Some(etcd2) = etcd2 else {
        return Ok(started);
    };
    builder.others("coreos.etcd2", &etcd2.other);
    let proxy = match etcd2.proxy.as_deref() {
        None | Some("off") => false,
        Some("on" | "readonly") => true,
        Some(other) => {
            return Err(invalid(
                "coreos.etcd2.proxy",
                format!("`{other}` is not on, readonly or off"),
            ));
        }
    };
    if proxy {
        builder.note(
            "coreos.etcd2.proxy",
            "this node uses the cluster's store without a member (role worker)".into(),
        );
    }
    if !started || proxy {
        if !started {
            builder.note(
                "coreos.etcd2",
                "etcd2.service is not started by coreos.units: no store member here".into(),
            );
        }
        return Ok(false);
    }
    if let Some(state) = &etcd2.initial_cluster_state
        && state != "new"
        && state != "existing"
    {
        return Err(invalid(
            "coreos.etcd2.initial_cluster_state",
            format!("`{state}` is not new or existing"),
        ));
    }
    // etcd2's flags and the agent's store fields share their names.
    for (key, value, what) in [
        (
            "initial_cluster",
            &etcd2.initial_cluster,
            "the store's initial cluster",
        ),
        (
            "initial_cluster_state",
            &etcd2.initial_cluster_state,
            "initial cluster state",
        ),
        (
            "initial_cluster_token",
            &etcd2.initial_cluster_token,
            "cluster token",
        ),
        (
            "listen_client_urls",
            &etcd2.listen_client_urls,
            "the member listens for clients on",
        ),
        (
            "advertise_client_urls",
            &etcd2.advertise_client_urls,
            "the member advertises client URLs",
        ),
        (
            "listen_peer_urls",
            &etcd2.listen_peer_urls,
            "the member listens for peers on",
        ),
        (
            "initial_advertise_peer_urls",
            &etcd2.initial_advertise_peer_urls,
            "the member advertises peer URLs",
        ),
        ("data_dir", &etcd2.data_dir, "the member's data in"),
    ] {
        if let Some(value) = value {
            let field = format!("store.{key}");
            builder.set(
                &field,
                string(value),
                &format!("coreos.etcd2.{key}"),
                format!("{what} `{value}` ({field})"),
            );
        }
    }
    for (value, key, field) in [
        (
            etcd2.heartbeat_interval,
            "heartbeat_interval",
            "store.heartbeat_interval",
        ),
        (
            etcd2.election_timeout,
            "election_timeout",
            "store.election_timeout",
        ),
    ] {
        if let Some(ms) = value {
            builder.set(
                field,
                string(&format!("{ms}ms")),
                &format!("coreos.etcd2.{key}"),
                format!("Raft {key} {ms}ms ({field})"),
            );
        }
    }
    member_tls(
        builder,
        "server_tls",
        [
            "cert_file",
            "key_file",
            "trusted_ca_file",
            "client_cert_auth",
        ],
        [&etcd2.cert_file, &etcd2.key_file, &etcd2.trusted_ca_file],
        etcd2.client_cert_auth,
    )?;
    member_tls(
        builder,
        "peer_tls",
        [
            "peer_cert_file",
            "peer_key_file",
            "peer_trusted_ca_file",
            "peer_client_cert_auth",
        ],
        [
            &etcd2.peer_cert_file,
            &etcd2.peer_key_file,
            &etcd2.peer_trusted_ca_file,
        ],
        etcd2.peer_client_cert_auth,
    )?;
    builder.note(
        "coreos.etcd2",
        "this node runs a member of the store (role master)".into(),
    );
    Ok(true)
}

/// etcd's TLS flags for one listener: `store.<section>`.
fn member_tls(
    builder: &mut Builder,
    section: &str,
    keys: [&str; 4],
    [cert, key, ca]: [&Option<String>; 3],
    client_cert_auth: bool,
) -> Result<(), Invalid> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            if ca.is_some() || client_cert_auth {
                return Err(invalid(
                    format!("coreos.etcd2.{}", keys[0]),
                    format!("{} needs {} and {}", keys[2], keys[0], keys[1]),
                ));
            }
            return Ok(());
        }
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(invalid(
                format!("coreos.etcd2.{}", keys[0]),
                format!("needs {}", keys[1]),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("coreos.etcd2.{}", keys[1]),
                format!("needs {}", keys[0]),
            ));
        }
    };
    let mut tls = Mapping::new();
    tls.insert(string("cert_file"), string(cert));
    tls.insert(string("key_file"), string(key));
    if let Some(ca) = ca {
        tls.insert(string("trusted_ca_file"), string(ca));
    }
    tls.insert(string("client_cert_auth"), Value::Bool(client_cert_auth));
    let field = format!("store.{section}");
    insert(&mut builder.agent, &field, Value::Mapping(tls));
    let listener = if section == "peer_tls" {
        "peer"
    } else {
        "client"
    };
    for (index, name) in keys.iter().enumerate() {
        let given = match index {
            0 => true,
            1 => true,
            2 => ca.is_some(),
            _ => client_cert_auth,
        };
        if given {
            let key = format!("coreos.etcd2.{name}");
            builder.provenance.push((
                format!("{field}.{}", name.trim_start_matches("peer_")),
                key.clone(),
            ));
            builder.note(&key, format!("the member's {listener} TLS ({field})"));
        }
    }
    Ok(())
}

/// The members' client URLs of a proxy's `initial_cluster`: each peer URL's host on 2379.
pub(super) fn proxy_endpoints(etcd2: Option<&Etcd2>) -> Option<Vec<String>> {
    let cluster = etcd2?.initial_cluster.as_deref()?;
    let endpoints: Vec<String> = cluster
        .split(',')
        .filter_map(|member| {
            let url = member.split_once('=')?.1.trim();
            let (scheme, rest) = url.split_once("://")?;
            let host = rest.split('/').next()?;
            let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
            Some(format!("{scheme}://{host}:2379"))
        })
        .collect();
    (!endpoints.is_empty()).then_some(endpoints)
}

/// Store TLS and auth of a component (fleet's or flannel's `etcd_*`) into `<section>.store`.
struct EtcdClient<'a> {
    cafile: &'a Option<String>,
    certfile: &'a Option<String>,
    keyfile: &'a Option<String>,
    username: &'a Option<String>,
    password: &'a Option<String>,
}

fn etcd_client(
    builder: &mut Builder,
    section: &str,
    cloud: &str,
    client: EtcdClient<'_>,
) -> Result<(), Invalid> {
    let mut tls = Mapping::new();
    for (value, key, field) in [
        (client.cafile, "etcd_cafile", "ca_file"),
        (client.certfile, "etcd_certfile", "cert_file"),
        (client.keyfile, "etcd_keyfile", "key_file"),
    ] {
        if let Some(path) = value {
            tls.insert(string(field), string(path));
            let agent_field = format!("{section}.store.tls.{field}");
            builder
                .provenance
                .push((agent_field.clone(), format!("{cloud}.{key}")));
            builder.note(
                &format!("{cloud}.{key}"),
                format!("store TLS `{path}` ({agent_field})"),
            );
        }
    }
    if !tls.is_empty() {
        insert(
            &mut builder.agent,
            &format!("{section}.store.tls"),
            Value::Mapping(tls),
        );
    }
    match (client.username, client.password) {
        (None, None) => {}
        (Some(user), Some(password)) => {
            let mut auth = Mapping::new();
            auth.insert(string("username"), string(user));
            auth.insert(string("password"), string(password));
            insert(
                &mut builder.agent,
                &format!("{section}.store.auth"),
                Value::Mapping(auth),
            );
            let field = format!("{section}.store.auth");
            builder
                .provenance
                .push((field.clone(), format!("{cloud}.etcd_username")));
            builder.note(
                &format!("{cloud}.etcd_username"),
                format!("store user `{user}` ({field})"),
            );
            builder.note(
                &format!("{cloud}.etcd_password"),
                format!("its password ({field})"),
            );
        }
        (Some(_), None) => {
            return Err(invalid(
                format!("{cloud}.etcd_username"),
                "needs etcd_password",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("{cloud}.etcd_password"),
                "needs etcd_username",
            ));
        }
    }
    Ok(())
}

/// Maps `coreos.fleet`; fleet's store endpoints if it names them.
pub(super) fn fleet(
    fleet: Option<&Fleet>,
    started: bool,
    builder: &mut Builder,
) -> Result<Option<Vec<String>>, Invalid> {
    insert(&mut builder.agent, "fleet.enabled", Value::Bool(started));
    let Some(fleet) = fleet else { return Ok(None) };
    if !started {
        builder.note(
            "coreos.fleet",
            "fleet.service is not started by coreos.units: fleet does not run here".into(),
        );
    }
    builder.others("coreos.fleet", &fleet.other);
    if let Some(text) = &fleet.metadata {
        let metadata =
            parse_metadata(text).map_err(|message| invalid("coreos.fleet.metadata", message))?;
        let mut map = Mapping::new();
        for (key, value) in &metadata {
            map.insert(string(key), string(value));
        }
        builder.set(
            "metadata",
            Value::Mapping(map),
            "coreos.fleet.metadata",
            format!("fleet machine metadata {text} (metadata)"),
        );
    }
    public_ip(builder, &fleet.public_ip, "coreos.fleet.public_ip")?;
    let endpoints = fleet.etcd_servers.as_deref().map(list);
    if let Some(endpoints) = &endpoints {
        builder.set(
            "fleet.store.endpoints",
            string_list(endpoints),
            "coreos.fleet.etcd_servers",
            format!(
                "fleet's store endpoints {} (fleet.store.endpoints)",
                endpoints.join(",")
            ),
        );
    }
    etcd_client(
        builder,
        "fleet",
        "coreos.fleet",
        EtcdClient {
            cafile: &fleet.etcd_cafile,
            certfile: &fleet.etcd_certfile,
            keyfile: &fleet.etcd_keyfile,
            username: &fleet.etcd_username,
            password: &fleet.etcd_password,
        },
    )?;
    if let Some(prefix) = &fleet.etcd_key_prefix {
        builder.set(
            "fleet.key_prefix",
            string(prefix),
            "coreos.fleet.etcd_key_prefix",
            format!("fleet's key prefix {prefix} (fleet.key_prefix)"),
        );
    }
    if let Some(ttl) = &fleet.agent_ttl {
        humantime::parse_duration(ttl).map_err(|err| {
            invalid(
                "coreos.fleet.agent_ttl",
                format!("`{ttl}` is not a duration such as 30s: {err}"),
            )
        })?;
        builder.set(
            "fleet.agent_ttl",
            string(ttl),
            "coreos.fleet.agent_ttl",
            format!("fleet agent TTL {ttl} (fleet.agent_ttl)"),
        );
    }
    for (value, key) in [
        (fleet.engine_reconcile_interval, "engine_reconcile_interval"),
        (fleet.etcd_request_timeout, "etcd_request_timeout"),
    ] {
        if let Some(seconds) = value {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(invalid(
                    format!("coreos.fleet.{key}"),
                    "must be a positive number of seconds",
                ));
            }
            let ms = (seconds * 1000.0).round() as u64;
            builder.set(
                &format!("fleet.{key}"),
                string(&format!("{ms}ms")),
                &format!("coreos.fleet.{key}"),
                format!("{seconds}s (fleet.{key})"),
            );
        }
    }
    if fleet.disable_engine {
        builder.set(
            "fleet.engine",
            Value::Bool(false),
            "coreos.fleet.disable_engine",
            "no engine candidate on this node (fleet.engine: false)".into(),
        );
    }
    Ok(endpoints)
}

fn public_ip(builder: &mut Builder, value: &Option<String>, key: &str) -> Result<(), Invalid> {
    let Some(text) = value else { return Ok(()) };
    let ip: Ipv4Addr = text.parse().map_err(|_| {
        invalid(
            key,
            format!(
                "`{text}` is not an IPv4 address (write the address itself; \
                     $public_ipv4 is not substituted)"
            ),
        )
    })?;
    let existing = builder
        .agent
        .get("public_ip")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(existing) = existing
        && existing != ip.to_string()
    {
        return Err(invalid(
            key,
            format!("differs from the public IP {existing} given elsewhere: the node has one"),
        ));
    }
    builder.set(
        "public_ip",
        string(&ip.to_string()),
        key,
        format!("the node's public address {ip} (public_ip)"),
    );
    Ok(())
}

/// fleet's `k=v,k=v`.
fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("`{pair}` has an empty key"));
            }
            Ok((key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Maps `coreos.flannel`; flannel's store endpoints if it names them.
pub(super) fn flannel(
    flannel: Option<&Flannel>,
    started: bool,
    network_config: Option<(String, serde_json::Value, String)>,
    builder: &mut Builder,
) -> Result<Option<Vec<String>>, Invalid> {
    insert(&mut builder.agent, "network.enabled", Value::Bool(started));
    if flannel.is_some() && !started {
        builder.note(
            "coreos.flannel",
            "flanneld.service is not started by coreos.units: no overlay here".into(),
        );
    }
    let prefix = flannel.and_then(|f| f.etcd_prefix.clone());
    if let Some((key, json, from)) = network_config {
        let expected = format!(
            "{}/config",
            prefix
                .as_deref()
                .unwrap_or("/coreos.com/network")
                .trim_end_matches('/')
        );
        if key != expected {
            return Err(invalid(
                from,
                format!(
                    "sets `{key}`, but the network config of this node's prefix is `{expected}`"
                ),
            ));
        }
        let yaml: Value =
            serde_yaml::to_value(&json).map_err(|err| invalid(from.clone(), err.to_string()))?;
        builder.set(
            "network.config",
            yaml,
            &from,
            format!("flannel's network config {json} (network.config, written if absent)"),
        );
    }
    let Some(flannel) = flannel else {
        return Ok(None);
    };
    builder.others("coreos.flannel", &flannel.other);
    if let Some(iface) = &flannel.interface {
        builder.set(
            "iface",
            string(iface),
            "coreos.flannel.interface",
            format!("the overlay's underlay interface {iface} (iface)"),
        );
    }
    public_ip(builder, &flannel.public_ip, "coreos.flannel.public_ip")?;
    if let Some(prefix) = &prefix {
        builder.set(
            "network.prefix",
            string(prefix),
            "coreos.flannel.etcd_prefix",
            format!("the network's store prefix {prefix} (network.prefix)"),
        );
    }
    let endpoints = flannel.etcd_endpoints.as_deref().map(list);
    if let Some(endpoints) = &endpoints {
        builder.set(
            "network.store.endpoints",
            string_list(endpoints),
            "coreos.flannel.etcd_endpoints",
            format!(
                "the overlay's store endpoints {} (network.store.endpoints)",
                endpoints.join(",")
            ),
        );
    }
    etcd_client(
        builder,
        "network",
        "coreos.flannel",
        EtcdClient {
            cafile: &flannel.etcd_cafile,
            certfile: &flannel.etcd_certfile,
            keyfile: &flannel.etcd_keyfile,
            username: &flannel.etcd_username,
            password: &flannel.etcd_password,
        },
    )?;
    if flannel.ip_masq {
        builder.set(
            "network.ip_masq",
            Value::Bool(true),
            "coreos.flannel.ip_masq",
            "masquerade traffic leaving the overlay (network.ip_masq)".into(),
        );
    }
    if let Some(file) = &flannel.subnet_file {
        builder.set(
            "network.subnet_file",
            string(file),
            "coreos.flannel.subnet_file",
            format!("subnet.env at {file} (network.subnet_file)"),
        );
    }
    Ok(endpoints)
}

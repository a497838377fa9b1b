//! Parsing and mapping of cloud-configs: no I/O.
use std::{path::Path, time::Duration};

use super::{
    mapping::{FileToWrite, UnitCommand},
    parse,
};
use crate::agent::{
    config::{Role, StoreTls},
    plan::Plan,
};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/cloud-config")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

const MINIMAL_MASTER: &str = "#cloud-config
coreos:
  etcd2:
    name: n1
    initial-cluster: n1=http://10.0.0.1:2380
  units:
    - name: etcd2.service
      command: start
    - name: fleet.service
      command: start
    - name: flanneld.service
      command: start
";

#[test]
fn the_books_db_node_maps_onto_a_master_with_its_metadata_and_network() {
    let node = parse(&example("node3.yaml")).expect("valid");
    let agent = &node.agent;
    assert_eq!(agent.name, "node3");
    assert_eq!(agent.role, Role::Master);
    assert_eq!(agent.metadata["compute"], "db");
    assert_eq!(agent.metadata["rack"], "rack3");
    assert_eq!(agent.public_ip, Some("10.90.0.13".parse().expect("ip")));
    assert_eq!(agent.iface.as_deref(), Some("10.90.0.13"));
    assert_eq!(agent.fleet.agent_ttl, Duration::from_secs(30));
    let network = agent.network.config.as_ref().expect("network config");
    assert_eq!(network["Network"], "10.244.0.0/16");
    assert_eq!(network["Backend"]["Type"], "vxlan");
    assert!(node.not_honoured.is_empty(), "{:?}", node.not_honoured);

    let plan = Plan::for_node(agent).expect("plan");
    let member = plan.member.expect("a store member").config;
    assert_eq!(member.initial_cluster.len(), 3);
    assert_eq!(member.initial_cluster_token, "coreos-book-cluster");
    assert_eq!(
        member.listen_client_urls,
        ["http://10.90.0.13:2379", "http://127.0.0.1:2379"]
    );
    assert_eq!(member.advertise_client_urls, ["http://10.90.0.13:2379"]);
    assert_eq!(
        member.initial_advertise_peer_urls,
        ["http://10.90.0.13:2380"]
    );
    assert_eq!(member.data_dir, Path::new("/var/lib/etcd2"));
    assert_eq!(plan.store.endpoints, ["http://10.90.0.13:2379"]);
    assert!(plan.overlay.is_some());
    let fleet = plan.fleet.expect("fleet runs");
    assert_eq!(fleet.metadata["compute"], "db");

    assert_eq!(node.setup.hostname.as_deref(), Some("node3"));
    let [docker] = node.setup.units.as_slice() else {
        panic!(
            "only docker.service is a unit of its own: {:?}",
            node.setup.units
        )
    };
    assert_eq!(docker.name, "docker.service");
    assert_eq!(docker.content, None, "the host's docker.service");
    assert_eq!(docker.command, Some(UnitCommand::Start));
    let [(drop_in, content)] = docker.drop_ins.as_slice() else {
        panic!("one drop-in")
    };
    assert_eq!(drop_in, "40-flannel.conf");
    assert_eq!(
        *content,
        crate::install::docker_drop_in(),
        "shoal install's drop-in"
    );
    let [profile] = node.setup.files.as_slice() else {
        panic!("one file")
    };
    assert_eq!(profile.path, "/etc/profile.d/etcdctl.sh");
    assert_eq!(
        (profile.mode, profile.owner.as_deref()),
        (0o644, Some("root"))
    );
}

#[test]
fn the_three_book_nodes_differ_in_name_address_and_metadata() {
    let nodes: Vec<_> = ["node1.yaml", "node2.yaml", "node3.yaml"]
        .iter()
        .map(|name| {
            parse(&example(name))
                .unwrap_or_else(|err| panic!("{name}: {err:?}"))
                .agent
        })
        .collect();
    let labels: Vec<String> = nodes
        .iter()
        .map(|node| {
            format!(
                "{} {} {}",
                node.name, node.metadata["compute"], node.metadata["rack"]
            )
        })
        .collect();
    assert_eq!(
        labels,
        ["node1 web rack1", "node2 web rack2", "node3 db rack3"]
    );
}

#[test]
fn dashes_and_underscores_in_keys_are_the_same_key() {
    let dashes = parse(MINIMAL_MASTER).expect("valid");
    let underscores =
        parse(&MINIMAL_MASTER.replace("initial-cluster", "initial_cluster")).expect("valid");
    assert_eq!(
        dashes.agent.store.initial_cluster,
        underscores.agent.store.initial_cluster
    );
    assert_eq!(
        dashes.agent.store.initial_cluster.as_deref(),
        Some("n1=http://10.0.0.1:2380")
    );
}

#[test]
fn components_run_only_when_their_units_are_started() {
    let node = parse("#cloud-config\nhostname: w1\ncoreos:\n  fleet:\n    etcd-servers: http://10.0.0.1:2379,http://10.0.0.2:2379\n  units:\n    - name: fleet.service\n      command: start\n").expect("valid");
    assert_eq!(node.agent.name, "w1", "named after the host");
    assert_eq!(node.agent.role, Role::Worker, "no etcd2 member");
    assert_eq!(
        node.agent.store.endpoints,
        ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    );
    assert!(node.agent.fleet.enabled);
    assert!(
        !node.agent.network.enabled,
        "flanneld.service is not started"
    );
}

#[test]
fn an_etcd2_proxy_is_a_worker_of_the_members_client_urls() {
    let node = parse("#cloud-config\ncoreos:\n  etcd2:\n    name: p1\n    proxy: on\n    initial-cluster: a=http://10.0.0.1:2380,b=https://10.0.0.2:2380\n  units:\n    - name: etcd2.service\n      command: start\n").expect("valid");
    assert_eq!(node.agent.role, Role::Worker);
    assert_eq!(
        node.agent.store.endpoints,
        ["http://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
}

#[test]
fn every_key_not_honoured_is_named_in_one_warning() {
    let text = format!(
        "{MINIMAL_MASTER}  update:\n    reboot-strategy: etcd-lock\n  locksmith:\n    window-start: Sun 1:00\n  etcd2x: {{}}\nmanage_etc_hosts: localhost\nfavourite_colour: blue\n"
    )
    .replace("    name: n1\n", "    name: n1\n    discovery: https://discovery.etcd.io/x\n");
    let node = parse(&text).expect("valid despite them");
    let keys: Vec<&str> = node
        .not_honoured
        .iter()
        .map(|entry| entry.key.as_str())
        .collect();
    for key in [
        "coreos.update",
        "coreos.locksmith",
        "coreos.etcd2x",
        "manage_etc_hosts",
        "favourite_colour",
        "coreos.etcd2.discovery",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    let warning = node.not_honoured_warning().expect("a warning");
    assert_eq!(warning.matches("coreos.update").count(), 1, "{warning}");
    assert!(
        warning.contains("favourite_colour (not a cloud-config key"),
        "{warning}"
    );
    assert!(warning.contains("coreos.update (OS updates"), "{warning}");
}

#[test]
fn component_unit_content_is_not_honoured_and_said_so() {
    let text = MINIMAL_MASTER.replace(
        "    - name: fleet.service\n      command: start\n",
        "    - name: fleet.service\n      command: start\n      content: |\n        [Service]\n        ExecStart=/usr/bin/fleetd\n",
    );
    let node = parse(&text).expect("valid");
    let [entry] = node.not_honoured.as_slice() else {
        panic!("{:?}", node.not_honoured)
    };
    assert_eq!(entry.key, "coreos.units[1].content");
    assert!(node.agent.fleet.enabled);
}

#[test]
fn errors_name_the_key_and_its_line() {
    let cases = [
        (
            MINIMAL_MASTER.replace(
                "command: start\n    - name: fleet",
                "command: begin\n    - name: fleet",
            ),
            "coreos.units[0].command",
            8,
        ),
        (
            format!("{MINIMAL_MASTER}write_files:\n  - path: /etc/x\n    permissions: '0999'\n"),
            "write_files[0].permissions",
            15,
        ),
        (
            format!("{MINIMAL_MASTER}write_files:\n  - path: relative\n"),
            "write_files[0].path",
            14,
        ),
        (
            format!("{MINIMAL_MASTER}  fleet:\n    metadata: compute\n"),
            "coreos.fleet.metadata",
            14,
        ),
        (
            MINIMAL_MASTER.replace("n1=http", "n2=http"),
            "coreos.etcd2.initial_cluster",
            5,
        ),
        (
            format!("{MINIMAL_MASTER}  fleet:\n    public-ip: $public_ipv4\n"),
            "coreos.fleet.public_ip",
            14,
        ),
        (
            format!("{MINIMAL_MASTER}users:\n  - name: 'a b'\n"),
            "users[0].name",
            14,
        ),
        (
            format!("{MINIMAL_MASTER}ssh_authorized_keys: {{ a: b }}\n"),
            "ssh_authorized_keys",
            13,
        ),
    ];
    for (text, key, line) in cases {
        let err = parse(&text).expect_err(key);
        assert_eq!((err.key.as_str(), err.line), (key, Some(line)), "{err:?}");
    }
    let err = parse("#cloud-config\ncoreos:\n  units: [\n").expect_err("bad YAML");
    assert_eq!(err.key, "(YAML)");
    assert!(err.line.is_some(), "{err:?}");
}

#[test]
fn write_files_decode_as_cloudinit_did() {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"zipped\n").expect("gzip");
    let zipped = base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"));
    let text = format!(
        "{MINIMAL_MASTER}write_files:\n  - path: /a\n    encoding: b64\n    content: aGVsbG8K\n    permissions: 0600\n    owner: nobody:nogroup\n  - path: /b\n    encoding: gzip+base64\n    content: {zipped}\n    append: true\n    owner: ':adm'\n  - path: /c\n    encoding: rot13\n"
    );
    let err = parse(&text).expect_err("rot13 is not an encoding");
    assert_eq!(err.key, "write_files[2].content");
    let text = text.replace("  - path: /c\n    encoding: rot13\n", "");
    let files = parse(&text).expect("valid").setup.files;
    assert_eq!(
        files,
        [
            FileToWrite {
                path: "/a".into(),
                content: b"hello\n".to_vec(),
                mode: 0o600,
                owner: Some("nobody".into()),
                group: Some("nogroup".into()),
                append: false,
            },
            FileToWrite {
                path: "/b".into(),
                content: b"zipped\n".to_vec(),
                mode: 0o644,
                owner: None,
                group: Some("adm".into()),
                append: true,
            }
        ]
    );
}

#[test]
fn etcd2_tls_keys_become_the_members_tls_and_fleet_and_flannel_get_their_own_files() {
    let text = MINIMAL_MASTER
        .replace(
            "    initial-cluster: n1=http://10.0.0.1:2380\n",
            "    initial-cluster: n1=https://10.0.0.1:2380\n    advertise-client-urls: https://10.0.0.1:2379\n    cert-file: /tls/server.pem\n    key-file: /tls/server-key.pem\n    trusted-ca-file: /tls/ca.pem\n    client-cert-auth: true\n    peer-cert-file: /tls/peer.pem\n    peer-key-file: /tls/peer-key.pem\n    peer-trusted-ca-file: /tls/ca.pem\n    peer-client-cert-auth: true\n",
        )
        + "  fleet:\n    etcd-cafile: /tls/ca.pem\n    etcd-certfile: /tls/fleet.pem\n    etcd-keyfile: /tls/fleet-key.pem\n  flannel:\n    etcd-cafile: /tls/ca.pem\n    etcd-certfile: /tls/flannel.pem\n    etcd-keyfile: /tls/flannel-key.pem\n";
    let node = parse(&text).expect("valid");
    assert_eq!(
        node.agent
            .fleet
            .store
            .tls
            .as_ref()
            .and_then(|tls: &StoreTls| tls.cert_file.clone()),
        Some("/tls/fleet.pem".into())
    );
    let plan = Plan::for_node(&node.agent).expect("plan");
    let member = plan.member.expect("member").config;
    let client = member.client_tls.expect("client TLS");
    assert_eq!(client.cert_file, Path::new("/tls/server.pem"));
    assert!(client.client_cert_auth);
    let peer = member.peer_tls.expect("peer TLS");
    assert_eq!(peer.key_file, Path::new("/tls/peer-key.pem"));
    assert_eq!(member.listen_client_urls, ["https://0.0.0.0:2379"]);
    let fleet = plan.fleet.expect("fleet");
    assert_eq!(fleet.etcd_certfile, Some("/tls/fleet.pem".into()));
    assert_eq!(fleet.etcd_servers, ["https://10.0.0.1:2379"]);
    let overlay = plan.overlay.expect("overlay").store;
    assert_eq!(overlay.certfile, Some("/tls/flannel.pem".into()));
    assert_eq!(
        plan.store.tls.and_then(|tls| tls.cert),
        Some("/tls/flannel.pem".into()),
        "the agent reads as the overlay"
    );

    let half = MINIMAL_MASTER.replace(
        "    name: n1\n",
        "    name: n1\n    cert-file: /tls/server.pem\n",
    );
    assert_eq!(
        parse(&half).expect_err("no key").key,
        "coreos.etcd2.cert_file"
    );
}

#[test]
fn units_keep_their_commands_drop_ins_and_flags() {
    let text = format!(
        "{MINIMAL_MASTER}    - name: hello.service\n      runtime: true\n      enable: true\n      command: restart\n      content: |\n        [Service]\n        ExecStart=/bin/echo one\n      drop-ins:\n        - name: 10-two.conf\n          content: |\n            [Service]\n            ExecStart=\n            ExecStart=/bin/echo two\n    - name: gone.service\n      mask: true\n"
    );
    let units = parse(&text).expect("valid").setup.units;
    let [hello, gone] = units.as_slice() else {
        panic!("{units:?}")
    };
    assert_eq!(hello.command, Some(UnitCommand::Restart));
    assert!(hello.runtime && hello.enable && !hello.mask);
    assert!(gone.mask);
    let (_, file) = super::units::supervised_unit(hello, |_| None).expect("a service");
    let starts: Vec<&str> = file
        .values("Service", "ExecStart")
        .iter()
        .map(|a| a.value.as_str())
        .collect();
    assert_eq!(starts, ["/bin/echo two"], "the drop-in replaces ExecStart");

    let installed = super::units::supervised_unit(
        &super::mapping::UnitAction {
            content: None,
            ..hello.clone()
        },
        |name| (name == "hello.service").then(|| "[Service]\nExecStart=/bin/true\n".to_string()),
    )
    .expect("the host's unit");
    assert_eq!(installed.1.values("Service", "ExecStart").len(), 1);
    let timer = super::mapping::UnitAction {
        name: "x.timer".into(),
        ..hello.clone()
    };
    assert!(
        super::units::supervised_unit(&timer, |_| None).is_err(),
        "services only"
    );
    let bad =
        format!("{MINIMAL_MASTER}    - name: bad.service\n      content: 'ExecStart=/bin/true'\n");
    assert_eq!(
        parse(&bad).expect_err("outside a section").key,
        "coreos.units[3].content"
    );
}

#[test]
fn the_shoal_section_sets_what_cloud_config_cannot() {
    let text = format!(
        "{MINIMAL_MASTER}shoal:\n  machine_id: 0123456789abcdef0123456789abcdef\n  health:\n    listen: 0.0.0.0:9911\n  network:\n    bpf_pin_root: /sys/fs/bpf/x\n"
    );
    let node = parse(&text).expect("valid");
    assert_eq!(
        node.agent.machine_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(node.agent.health.listen.port(), 9911);
    assert!(node.agent.network.enabled, "kept from flanneld.service");
    assert_eq!(
        node.agent.network.bpf_pin_root.as_deref(),
        Some(Path::new("/sys/fs/bpf/x"))
    );
    let bad = format!("{MINIMAL_MASTER}shoal:\n  health:\n    listen: nowhere\n");
    assert_eq!(
        parse(&bad).expect_err("bad listen").key,
        "shoal.health.listen"
    );
}

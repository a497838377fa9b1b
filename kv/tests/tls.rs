//! TLS on every port with etcd's flags: the harness's TLS fixture brings up etcd 3.4 and shoal
//! kv the same way (client and peer certificates from shoal-pki, `--client-cert-auth` on both
//! ports), and etcdctl works against both with the root client certificate.
mod common;

use std::path::Path;

use futures::StreamExt;
use shoal_harness::{StoreCluster, StoreKind};
use shoal_kv::api::authority::AuthorityFixingStream;
use shoal_kv::api::identity::ClientConnectInfo;
use shoal_kv::listen::{bind_all, connections};
use shoal_kv::tls::{Tls, TlsFiles};
use shoal_pki::{Authority, Request, Usage};

fn start_tls(kind: StoreKind, size: usize) -> StoreCluster {
    StoreCluster::builder(kind, size)
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .tls()
        .start()
}

#[test]
fn etcdctl_puts_and_gets_over_tls_against_etcd_and_shoal_kv() {
    for kind in [StoreKind::Etcd, StoreKind::ShoalKv] {
        let cluster = start_tls(kind, 3);
        assert!(
            cluster
                .client_urls()
                .iter()
                .all(|u| u.starts_with("https://"))
        );
        assert_eq!(
            cluster.ctl(&["put", "/tls", "yes"]).expect("put").trim(),
            "OK"
        );
        let got = cluster.ctl(&["get", "/tls"]).expect("get");
        assert_eq!(got, "/tls\nyes\n", "{}", kind.name());
        let members = cluster.ctl(&["member", "list"]).expect("member list");
        println!("{}: member list\n{members}", kind.name());
        assert_eq!(
            members.matches("https://127.0.0.1:").count(),
            6,
            "{members}"
        );
    }
}

/// The CA, a server certificate for 127.0.0.1 and a client certificate for `alice`, in `dir`.
fn certificates(dir: &Path) -> (Authority, TlsFiles) {
    let ca = Authority::create("test CA").expect("CA");
    ca.write(dir).expect("CA written");
    let server = ca
        .issue(&Request::new("server", Usage::Server).hosts(["127.0.0.1"]))
        .expect("server certificate")
        .write(dir, "server")
        .expect("written");
    ca.issue(&Request::new("alice", Usage::Client))
        .expect("client certificate")
        .write(dir, "alice")
        .expect("written");
    let files = TlsFiles {
        cert_file: server.certificate,
        key_file: server.key,
        trusted_ca_file: Some(dir.join("ca.pem")),
        client_cert_auth: true,
    };
    (ca, files)
}

/// A gRPC server on `url` that answers every request with an error naming the
/// [`ClientConnectInfo`] the request carried (as the client listener hands it to tonic).
async fn identity_echo(url: &str, tls: Option<std::sync::Arc<Tls>>) -> u16 {
    let listener = bind_all(&[url.to_string()])
        .await
        .expect("bind")
        .pop()
        .expect("a listener");
    let port = listener.tcp.local_addr().expect("address").port();
    let incoming = connections(listener, tls, None)
        .expect("connections")
        .map(|accepted| accepted.map(AuthorityFixingStream::new));
    let echo = |request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        let info = request.extensions().get::<ClientConnectInfo>().cloned();
        Err(tonic::Status::unauthenticated(format!("identity {info:?}")))
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(echo))
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming),
    );
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_a_client_certificate_connection_carries_its_common_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_ca, files) = certificates(dir.path());
    let read = |name: &str| std::fs::read(dir.path().join(name)).expect("read");
    let ask_as_alice = |port: u16| {
        let options = etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
                .identity(etcd_client::Identity::from_pem(
                    read("alice.pem"),
                    read("alice-key.pem"),
                )),
        );
        async move {
            let url = format!("https://127.0.0.1:{port}");
            let mut client = etcd_client::Client::connect([url], Some(options))
                .await
                .expect("connect");
            format!("{:?}", client.get("k", None).await.expect_err("echoed"))
        }
    };
    let tls = Tls::load(files.clone(), &[b"h2"]).expect("TLS loads");
    let answer = ask_as_alice(identity_echo("https://127.0.0.1:0", Some(tls)).await).await;
    println!("--client-cert-auth: {answer}");
    assert!(answer.contains(r#"common_name: \"alice\""#), "{answer}");

    // A trusted CA alone verifies the certificate but, as in etcd, names no user.
    let ca_only = TlsFiles {
        client_cert_auth: false,
        ..files
    };
    let tls = Tls::load(ca_only, &[b"h2"]).expect("TLS loads");
    let answer = ask_as_alice(identity_echo("https://127.0.0.1:0", Some(tls)).await).await;
    println!("--trusted-ca-file alone: {answer}");
    assert!(answer.contains("certificate: None"), "{answer}");

    let port = identity_echo("http://127.0.0.1:0", None).await;
    let mut client = etcd_client::Client::connect([format!("http://127.0.0.1:{port}")], None)
        .await
        .expect("connect");
    let answer = format!("{:?}", client.get("k", None).await.expect_err("echoed"));
    println!("plaintext: {answer}");
    assert!(
        answer.contains("remote: Some(127.0.0.1:") && answer.contains("certificate: None"),
        "{answer}"
    );
}

/// etcdctl against `endpoint` with the given CA and client certificate files; its stdout, or
/// its stderr when it failed.
fn etcdctl_as(
    endpoint: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    args: &[&str],
) -> Result<String, String> {
    let mut all: Vec<String> = ["--cacert", "--cert", "--key"]
        .iter()
        .zip([ca, cert, key])
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect();
    all.extend(["--dial-timeout=1s", "--command-timeout=2s"].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (ok, out, err) = shoal_harness::store::etcdctl(&[endpoint.to_string()], &all, None);
    if ok { Ok(out) } else { Err(err) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_and_ca_reach_new_connections_without_a_restart() {
    let cluster = tokio::task::spawn_blocking(|| start_tls(StoreKind::ShoalKv, 1))
        .await
        .expect("started");
    let tls = cluster.tls().expect("a TLS cluster");
    let endpoint = cluster.client_url(0);
    let pid = cluster.process(0).expect("running").pid();
    let old_ca = tls.dir.join("old-ca.pem");
    std::fs::copy(&tls.ca, &old_ca).expect("keep the old CA");
    let read = |path: &Path| std::fs::read(path).expect("read");

    // A connection made before the rotation, with the old CA only.
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&old_ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&tls.root.certificate),
                read(&tls.root.key),
            )),
    );
    let mut held = etcd_client::Client::connect([endpoint.as_str()], Some(options))
        .await
        .expect("connect");
    held.put("/before", "1", None).await.expect("put before");

    // The rotation: a new CA joins the bundle, the server certificate is one it signed.
    let new_ca = Authority::create("rotated CA").expect("CA");
    let new_dir = tls.dir.join("new");
    let new_ca_file = new_ca.write(&new_dir).expect("written").certificate;
    let bundle = format!(
        "{}{}",
        String::from_utf8_lossy(&read(&old_ca)),
        new_ca.certificate_pem()
    );
    shoal_pki::write_file(&tls.ca, bundle.as_bytes(), 0o644).expect("CA bundle");
    new_ca
        .issue(&Request::new("alpha", Usage::Server).hosts(["127.0.0.1"]))
        .expect("server certificate")
        .write(&tls.dir, "alpha-server")
        .expect("rotated on disk");
    let carol = new_ca
        .issue(&Request::new("carol", Usage::Client))
        .expect("client certificate")
        .write(&new_dir, "carol")
        .expect("written");

    // New connections: trusting only the new CA, with a client certificate only it signed.
    let started = std::time::Instant::now();
    let rotated = loop {
        match etcdctl_as(
            &endpoint,
            &new_ca_file,
            &carol.certificate,
            &carol.key,
            &["get", "/before"],
        ) {
            Ok(out) => break out,
            Err(err) => assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the rotated certificate was never served: {err}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    println!("rotated after {:?}: {rotated}", started.elapsed());
    assert_eq!(rotated, "/before\n1\n");
    let stale = etcdctl_as(
        &endpoint,
        &old_ca,
        &tls.root.certificate,
        &tls.root.key,
        &["get", "/before"],
    );
    assert!(
        stale.is_err(),
        "a new connection still got the old certificate"
    );
    // The connection made before the rotation carries on.
    held.put("/after", "2", None)
        .await
        .expect("the old connection continues");
    assert_eq!(
        cluster.process(0).expect("running").pid(),
        pid,
        "no restart"
    );
}

/// Connects to a peer port over TLS trusting `ca`, presenting `identity` if any, and waits a
/// second for the server's verdict: `Err` when it refused the connection.
async fn peer_handshake(
    port: u16,
    ca: &Path,
    identity: Option<&shoal_pki::Files>,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA") {
        roots.add(cert.expect("CA certificate")).expect("a root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(files) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&files.certificate)
                    .expect("certificate")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certificates"),
                PrivateKeyDer::from_pem_file(&files.key).expect("key"),
            )
            .expect("identity"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(std::time::Duration::from_secs(1), stream.read(&mut byte)).await {
        Err(_) => Ok(()),
        Ok(Ok(0)) => Err("closed".to_string()),
        Ok(Ok(_)) => Err("unexpected data".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_from_the_cluster_ca_is_refused_at_the_handshake() {
    let cluster = tokio::task::spawn_blocking(|| start_tls(StoreKind::ShoalKv, 1))
        .await
        .expect("started");
    let tls = cluster.tls().expect("a TLS cluster");
    let port = cluster.specs[0].peer_port;
    let stranger_dir = tls.dir.join("stranger");
    let stranger_ca = Authority::create("another CA").expect("CA");
    let stranger = stranger_ca
        .issue(&Request::new("mallory", Usage::Peer).hosts(["127.0.0.1"]))
        .expect("issued")
        .write(&stranger_dir, "mallory")
        .expect("written");
    let member = shoal_pki::Files {
        certificate: tls.dir.join("alpha-peer.pem"),
        key: tls.dir.join("alpha-peer-key.pem"),
    };

    let no_certificate = peer_handshake(port, &tls.ca, None).await;
    println!("no client certificate: {no_certificate:?}");
    assert!(no_certificate.is_err());
    let foreign = peer_handshake(port, &tls.ca, Some(&stranger)).await;
    println!("a certificate from another CA: {foreign:?}");
    assert!(foreign.is_err());
    let plaintext = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("TCP");
        tcp.write_all(&[0, 0, 0, 9, 8, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tcp.read_to_end(&mut answer),
        )
        .await;
        answer
    };
    println!(
        "a plaintext Members frame got {} bytes back",
        plaintext.len()
    );
    assert!(
        !plaintext.starts_with(&[0, 0]),
        "a plaintext frame was answered"
    );
    let own = peer_handshake(port, &tls.ca, Some(&member)).await;
    println!("the cluster's peer certificate: {own:?}");
    assert_eq!(own, Ok(()));
    assert!(cluster.member_ready(0), "the member still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_member_joins_a_tls_cluster() {
    let cluster = tokio::task::spawn_blocking(|| start_tls(StoreKind::ShoalKv, 2))
        .await
        .expect("started");
    cluster.ctl(&["put", "/joined", "before"]).expect("put");
    let ports = shoal_harness::free_ports(2);
    let client_url = format!("https://127.0.0.1:{}", ports[0]);
    let peer_url = format!("https://127.0.0.1:{}", ports[1]);
    let tls = cluster.tls().expect("TLS");
    let add = [
        "member",
        "add",
        "charlie",
        &format!("--peer-urls={peer_url}"),
    ];
    // etcd's strict reconfiguration check refuses a member until every voter has been
    // connected for 5 s ("unhealthy cluster"): a fresh cluster makes the client wait, as etcd's would.
    let started = std::time::Instant::now();
    let added = loop {
        match etcdctl_as(
            &cluster.client_url(0),
            &tls.ca,
            &tls.root.certificate,
            &tls.root.key,
            &add,
        ) {
            Ok(out) => break out,
            Err(err) if started.elapsed() < std::time::Duration::from_secs(20) => {
                assert!(err.contains("unhealthy cluster"), "{err}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(err) => panic!("member add: {err}"),
        }
    };
    println!("{added}");
    let initial = format!("{},charlie={peer_url}", cluster.initial_cluster());
    let _charlie = cluster.spawn_joiner("charlie", &client_url, &peer_url, &initial);
    let started = std::time::Instant::now();
    let read = loop {
        match etcdctl_as(
            &client_url,
            &tls.ca,
            &tls.root.certificate,
            &tls.root.key,
            &["get", "/joined"],
        ) {
            Ok(out) if !out.is_empty() => break out,
            other => assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "charlie never served: {other:?}\n{}",
                std::fs::read_to_string(cluster.dir().join("charlie.log")).unwrap_or_default()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(read, "/joined\nbefore\n");
    let members = cluster.ctl(&["member", "list"]).expect("member list");
    println!("{members}");
    assert!(
        members.contains(&format!("charlie, {peer_url}, {client_url}")),
        "{members}"
    );
    let status = etcdctl_as(
        &client_url,
        &tls.ca,
        &tls.root.certificate,
        &tls.root.key,
        &["endpoint", "status", "--cluster", "-w", "table"],
    )
    .expect("endpoint status");
    println!("{status}");
    assert_eq!(status.matches("https://127.0.0.1:").count(), 3, "{status}");
}

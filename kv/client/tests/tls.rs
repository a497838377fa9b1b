//! Against a real etcd 3.4 that serves TLS and checks client certificates: a client with the
//! CA and its own certificate connects, and one without a client certificate is refused.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shoal_harness::{Process, StoreCluster, StoreKind, free_ports, store::ETCD};
use shoal_store_client::{StoreClient, StoreConfig, TlsFiles};

/// Runs `openssl <command>` (whitespace-separated arguments) in `dir`; panics with its stderr
/// if it fails.
fn openssl(dir: &Path, command: &str) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(command.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key and a certificate the CA signs for `name`, with `extensions` (openssl's config lines).
fn issue(dir: &Path, name: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("an extensions file");
    openssl(
        dir,
        &format!("req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"),
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
             -out {name}.pem -extfile {name}.ext"
        ),
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) {
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=shoal-test-ca",
    );
    issue(
        dir,
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    issue(dir, "client", "extendedKeyUsage=clientAuth\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_with_the_ca_and_its_certificate_connects() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    certificates(dir.path());
    let ports = free_ports(2);
    let endpoint = format!("https://127.0.0.1:{}", ports[0]);
    let peer = format!("http://127.0.0.1:{}", ports[1]);
    let mut etcd = Command::new(ETCD);
    etcd.args(["--name", "tls", "--data-dir"])
        .arg(path("data"))
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("tls={peer}")])
        .arg("--cert-file")
        .arg(path("server.pem"))
        .arg("--key-file")
        .arg(path("server.key"))
        .arg("--trusted-ca-file")
        .arg(path("ca.pem"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _etcd = Process::spawn("etcd 3.4 with TLS", &mut etcd);

    let tls = TlsFiles {
        ca: Some(path("ca.pem")),
        cert: Some(path("client.pem")),
        key: Some(path("client.key")),
    };
    let bare = endpoint.trim_start_matches("https://").to_string();
    let config = StoreConfig::new([bare])
        .with_timeout(Duration::from_secs(2))
        .with_tls(tls.clone());
    let start = Instant::now();
    let store = loop {
        match StoreClient::connect(&config).await {
            Ok(store) => break store,
            Err(err) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "never connected: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        store.endpoint().url(),
        endpoint,
        "a bare endpoint gets https"
    );
    let mut client = store.client();
    store
        .call("put", client.put("/tls", "ok", None))
        .await
        .expect("a write over TLS");

    let without_identity = StoreConfig::new([endpoint])
        .with_timeout(Duration::from_secs(2))
        .with_tls(TlsFiles {
            cert: None,
            key: None,
            ..tls
        });
    assert!(
        StoreClient::connect(&without_identity).await.is_err(),
        "the store checks client certificates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_connects_to_shoal_kv_with_client_certificates() {
    let cluster =
        tokio::task::spawn_blocking(|| StoreCluster::builder(StoreKind::ShoalKv, 1).tls().start())
            .await
            .expect("started");
    let started = Instant::now();
    let pki = cluster.tls().expect("a TLS cluster");
    let tls = TlsFiles {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.root.certificate.clone()),
        key: Some(pki.root.key.clone()),
    };
    let config = StoreConfig::new(cluster.client_urls())
        .with_timeout(Duration::from_secs(2))
        .with_tls(tls.clone());
    let store = StoreClient::connect(&config)
        .await
        .expect("connects over TLS");
    assert!(store.endpoint().url().starts_with("https://"));
    let mut client = store.client();
    store
        .call("put", client.put("/tls", "shoal", None))
        .await
        .expect("a write over TLS");
    let got = store
        .call("get", client.get("/tls", None))
        .await
        .expect("a read over TLS");
    assert_eq!(got.kvs()[0].value(), b"shoal");

    let without_identity = StoreConfig::new(cluster.client_urls())
        .with_timeout(Duration::from_secs(2))
        .with_tls(TlsFiles {
            cert: None,
            key: None,
            ..tls
        });
    println!("connected, wrote and read in {:?}", started.elapsed());
    let refused = StoreClient::connect(&without_identity).await;
    println!("refused in {:?}: {refused:?}", started.elapsed());
    assert!(refused.is_err(), "shoal kv checks client certificates");
}

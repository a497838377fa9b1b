//! etcd's auth, differentially: the same etcdctl session (users, roles, permissions on keys,
//! prefixes and ranges, `auth enable`, `--user` reads and writes allowed and denied, a wrong
//! password, `user passwd`, revocations, txn and watch denied, `auth disable`) against a
//! 3-member etcd 3.4 and a 3-member shoal kv must print the same, command by command: exit
//! status, stdout and stderr. Only the members' addresses differ, and are named alike. The
//! session runs twice: in plaintext, and over TLS with `--client-cert-auth`, where a request
//! without a token is its client certificate's common name.
//! etcdctl spreads its requests over the endpoints, so tokens are used on members other than
//! the one that issued them. Then the `etcd-client` crate logs in to shoal kv, and a raw
//! token is used on every member until `--auth-token-ttl` ends it.
mod common;

use std::process::{Command, Stdio};

use etcd_client::{Client, ConnectOptions, Permission, PutOptions};
use shoal_harness::StoreKind;
use shoal_harness::store::ETCDCTL;
use shoal_kv::proto::etcdserverpb::{self as pb, auth_client::AuthClient, kv_client::KvClient};
use shoal_pki::Files;

/// One etcdctl invocation: its arguments and what it reads on stdin.
struct Step {
    args: &'static str,
    stdin: Option<&'static str>,
}

const fn run(args: &'static str) -> Step {
    Step { args, stdin: None }
}

const fn run_with(args: &'static str, stdin: &'static str) -> Step {
    Step {
        args,
        stdin: Some(stdin),
    }
}

const ALICE: &str = "--user alice:alicepw";

/// The session, in order. `{alice}` and `{root}` stand for the `--user` flags; `{alice-cert}`
/// presents alice's client certificate over TLS (and nothing in plaintext). (etcdctl's
/// `auth enable` creates the root role and grants it to root itself when it is missing.)
const SESSION: &[Step] = &[
    run("auth enable"),
    run("user add root:rootpw --interactive=false"),
    run("user add root:again --interactive=false"),
    run("role add app"),
    run("role add app"),
    run("role grant-permission app readwrite /app/ --prefix"),
    run("role grant-permission app read /ro/a /ro/c"),
    run("role grant-permission app write /wo"),
    run("role grant-permission app read /zz/ --from-key"),
    run("role grant-permission nosuch read /x"),
    run("user add alice:alicepw --interactive=false"),
    run("user grant-role alice app"),
    run("user grant-role alice nosuch"),
    run("user grant-role nobody app"),
    run("put /app/x 1"),
    run("put /ro/b 2"),
    run("put /secret/s 3"),
    run("put /wo w"),
    run("--user alice:alicepw get /app/x"),
    run("auth enable"),
    run("get /app/x"),
    run("put /app/x 0"),
    run("{alice-cert} get /app/x"),
    run("{alice-cert} put /secret/s x"),
    run("{alice-cert} user list"),
    run("{alice} get /app/x"),
    run("{alice} put /app/y 2"),
    run("{alice} put /app/y 3 --prev-kv"),
    run("{alice} get /app/ --prefix"),
    run("{alice} get /secret/s"),
    run("{alice} put /secret/s x"),
    run("{alice} del /secret/s"),
    run("{alice} get /ro/a /ro/c"),
    run("{alice} get /ro/a /ro/d"),
    run("{alice} get /ro/ --prefix"),
    run("{alice} put /ro/b x"),
    run("{alice} put /wo v"),
    run("{alice} get /wo"),
    run("{alice} del /wo --prev-kv"),
    run("{alice} del /wo"),
    run("put /zz/a z"),
    run("{root} put /zz/b z"),
    run("{alice} get /zz/a --from-key"),
    run("{alice} get /zy --from-key"),
    run("{alice} del /app/y"),
    run("--user alice:wrong get /app/x"),
    run("--user nobody:pw get /app/x"),
    run_with(
        "{alice} txn",
        "value(\"/app/x\") = \"1\"\n\nput /app/x 2\n\nput /secret/s 9\n\n",
    ),
    run_with(
        "{alice} txn",
        "value(\"/secret/s\") = \"3\"\n\nput /app/x 2\n\nput /app/x 3\n\n",
    ),
    run_with(
        "{alice} txn",
        "value(\"/app/x\") = \"1\"\n\nput /app/x 2\nget /app/x\n\nget /ro/b\n\n",
    ),
    run("{alice} watch /secret/s"),
    run("{alice} watch /secret/ --prefix"),
    run("{alice} user list"),
    run("{alice} role list"),
    run("{alice} user get alice"),
    run("{alice} user get root"),
    run("{alice} role get app"),
    run("{alice} role add sneaky"),
    run("{alice} user grant-role alice root"),
    run("{alice} auth disable"),
    run("{alice} compaction 1"),
    run("{alice} defrag"),
    run("{alice} endpoint hashkv"),
    run("{alice} member add delta --peer-urls=http://127.0.0.1:9"),
    run("{alice} member remove 1234"),
    run("{root} user list"),
    run("{root} role list"),
    run("{root} user get alice --detail"),
    run("{root} user get nobody"),
    run("{root} role get app"),
    run("{root} role get nosuch"),
    run("{root} user delete root"),
    run("{root} user revoke-role root root"),
    run("{root} role delete root"),
    run_with("{root} user passwd alice --interactive=false", "newpw\n"),
    run("{alice} get /app/x"),
    run("--user alice:newpw get /app/x"),
    run("{root} role revoke-permission app /app/ --prefix"),
    run("{root} role revoke-permission app /app/ --prefix"),
    run("--user alice:newpw get /app/x"),
    run("--user alice:newpw get /ro/b"),
    run("{root} user revoke-role alice app"),
    run("{root} user revoke-role alice app"),
    run("--user alice:newpw get /ro/b"),
    run("{root} user get alice --detail"),
    run("{root} get /secret/s"),
    run("{root} role delete app"),
    run("{root} role list"),
    run("{root} user delete alice"),
    run("--user alice:newpw get /app/x"),
    run("{root} user list"),
    run("{root} auth disable"),
    run("get /secret/s"),
    run("user list"),
    run("auth disable"),
];

/// Where a session's etcdctl goes: the members' URLs and, over TLS, the CA and the client
/// certificates of `root` (what etcdctl presents unless told otherwise) and `alice`.
struct Target {
    urls: Vec<String>,
    tls: Option<TlsFiles>,
}

struct TlsFiles {
    ca: String,
    root: Files,
    alice: Files,
}

impl Target {
    /// etcdctl's TLS flags, presenting `alice`'s certificate when the step asks for it.
    fn tls_args(&self, as_alice: bool) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        let files = if as_alice { &tls.alice } else { &tls.root };
        let path = |p: &std::path::Path| p.display().to_string();
        vec![
            format!("--cacert={}", tls.ca),
            format!("--cert={}", path(&files.certificate)),
            format!("--key={}", path(&files.key)),
        ]
    }
}

/// What etcdctl printed for one step, with each member's address named `member<i>`.
fn invoke(target: &Target, step: &Step) -> String {
    let as_alice = step.args.contains("{alice-cert}");
    let args = step
        .args
        .replace("{alice-cert} ", "")
        .replace("{alice}", ALICE)
        .replace("{root}", "--user root:rootpw");
    let mut child = Command::new("timeout")
        // A watch that was not refused would wait for events until this ends it. The bounds
        // are generous: a loaded machine must not make one side time out (dialing with
        // `--user` authenticates, a bcrypt check).
        .args(["20", ETCDCTL, "--dial-timeout=10s", "--command-timeout=15s"])
        .arg(format!("--endpoints={}", target.urls.join(",")))
        .args(target.tls_args(as_alice))
        .args(args.split_whitespace())
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running etcdctl");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = step.stdin {
        std::io::Write::write_all(&mut input, text.as_bytes()).expect("writing to etcdctl");
    }
    drop(input);
    let output = child.wait_with_output().expect("etcdctl output");
    // The client's own retry logs (JSON, with timestamps) are not the server's answer.
    let stderr: String = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut text = format!(
        "$ etcdctl {}\nexit {}\n{}{}",
        step.args,
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout),
        stderr
    );
    for (i, url) in target.urls.iter().enumerate() {
        let endpoint = url.split_once("://").map_or(url.as_str(), |(_, e)| e);
        text = text.replace(url, &format!("member{i}"));
        text = text.replace(endpoint, &format!("member{i}"));
    }
    text
}

/// The session's transcript against a new 3-member cluster of `kind`.
async fn session(kind: StoreKind, tls: bool) -> Vec<String> {
    let cluster = match tls {
        true => common::start_tls(kind, 3).await,
        false => common::start(kind, 3).await,
    };
    let target = Target {
        urls: cluster.client_urls(),
        tls: cluster.tls().map(|tls| TlsFiles {
            ca: tls.ca.display().to_string(),
            root: tls.root.clone(),
            alice: tls.client("alice"),
        }),
    };
    tokio::task::spawn_blocking(move || SESSION.iter().map(|step| invoke(&target, step)).collect())
        .await
        .expect("session")
}

/// Runs the session against etcd 3.4 and shoal kv side by side; the steps that differ.
async fn compare(tls: bool) {
    let (etcd, shoal) = tokio::join!(
        session(StoreKind::Etcd, tls),
        session(StoreKind::ShoalKv, tls)
    );
    let mut differences = Vec::new();
    for (etcd, shoal) in etcd.iter().zip(&shoal) {
        println!("{shoal}");
        if etcd != shoal {
            differences.push(format!("etcd 3.4:\n{etcd}shoal kv:\n{shoal}"));
        }
    }
    let transport = if tls { "TLS" } else { "plaintext" };
    println!(
        "{transport}: {} commands compared, {} differ",
        SESSION.len(),
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "the {transport} sessions differ:\n{}",
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcdctl_auth_session_reads_the_same_as_against_etcd() {
    compare(false).await;
}

/// Over TLS with `--client-cert-auth`, a request without a token is its certificate's user:
/// etcdctl presents `root`'s unless a step presents `alice`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcdctl_auth_session_over_tls_reads_the_same_as_against_etcd() {
    compare(true).await;
}

fn status_of(error: etcd_client::Error) -> (tonic::Code, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_logs_in_and_a_token_works_on_every_member() {
    let cluster = common::start_with(StoreKind::ShoalKv, 3, &["--auth-token-ttl", "2"]).await;
    let endpoints = cluster.endpoints();
    let mut admin = common::connect(&endpoints).await;
    let no_root = admin.auth_enable().await.expect_err("no root user");
    assert_eq!(
        status_of(no_root),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: root user does not exist".to_string()
        )
    );
    admin
        .user_add("root", "rootpw", None)
        .await
        .expect("add root");
    let no_role = admin
        .auth_enable()
        .await
        .expect_err("root without the root role");
    assert_eq!(
        status_of(no_role),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: root user does not have root role".to_string()
        )
    );
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    admin.role_add("app").await.expect("add role");
    let permission = Permission::read_write("/app/").with_prefix();
    admin
        .role_grant_permission("app", permission)
        .await
        .expect("grant");
    admin
        .user_add("alice", "alicepw", None)
        .await
        .expect("add alice");
    admin
        .user_grant_role("alice", "app")
        .await
        .expect("alice role");
    admin.auth_enable().await.expect("enable");
    // Passwords reach the log and the data file only as bcrypt hashes (every member's log
    // holds the same entries: one member's files tell).
    for file in common::data_files(&cluster.specs[0].data_dir) {
        let bytes = std::fs::read(&file).expect("reading a data file");
        let plaintext = bytes.windows(7).any(|w| w == b"alicepw");
        assert!(!plaintext, "{} holds a password", file.display());
    }

    let as_alice = ConnectOptions::new().with_user("alice", "alicepw");
    let mut alice = Client::connect(&endpoints[..1], Some(as_alice))
        .await
        .expect("alice logs in");
    alice
        .put("/app/a", "1", None)
        .await
        .expect("alice writes her keys");
    let denied = alice.put("/other", "1", None).await.expect_err("not hers");
    assert_eq!(
        status_of(denied),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied".to_string()
        )
    );
    let wrong = ConnectOptions::new().with_user("alice", "wrong");
    let Err(refused) = Client::connect(&endpoints[..1], Some(wrong)).await else {
        panic!("logged in with a wrong password");
    };
    assert_eq!(
        status_of(refused),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password".to_string()
        )
    );

    // A token from member 0 is known to every member: each applied the Authenticate.
    let mut auth = AuthClient::connect(format!("http://{}", endpoints[0]))
        .await
        .expect("auth client");
    let token = auth
        .authenticate(pb::AuthenticateRequest {
            name: "alice".to_string(),
            password: "alicepw".to_string(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token;
    for endpoint in &endpoints {
        let mut kv = KvClient::connect(format!("http://{endpoint}"))
            .await
            .expect("kv client");
        let mut request = tonic::Request::new(pb::RangeRequest {
            key: b"/app/a".to_vec(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().expect("token metadata"));
        let response = kv.range(request).await.expect("range with the token");
        assert_eq!(response.into_inner().kvs[0].value, b"1");
        let mut forged = tonic::Request::new(pb::RangeRequest {
            key: b"/app/a".to_vec(),
            ..Default::default()
        });
        forged
            .metadata_mut()
            .insert("token", "forged.1".parse().expect("token metadata"));
        let refused = kv.range(forged).await.expect_err("a forged token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "etcdserver: invalid auth token");
    }
    // Revoking a lease deletes its keys, so it needs write on each; so does attaching one.
    let lease = admin.lease_grant(600, None).await.expect("lease").id();
    let mut root = Client::connect(
        &endpoints[..1],
        Some(ConnectOptions::new().with_user("root", "rootpw")),
    )
    .await
    .expect("root logs in");
    let on_lease = PutOptions::new().with_lease(lease);
    root.put("/secret/held", "1", Some(on_lease.clone()))
        .await
        .expect("root attaches a key");
    let attach = alice.put("/app/b", "1", Some(on_lease)).await;
    let revoke = alice.lease_revoke(lease).await;
    for refused in [attach.expect_err("attach"), revoke.expect_err("revoke")] {
        assert_eq!(status_of(refused).0, tonic::Code::PermissionDenied);
    }
    root.lease_revoke(lease).await.expect("root revokes");

    // Unused for longer than --auth-token-ttl, the token is gone on every member.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut kv = KvClient::connect(format!("http://{}", endpoints[1]))
        .await
        .expect("kv client");
    let mut expired = tonic::Request::new(pb::RangeRequest {
        key: b"/app/a".to_vec(),
        ..Default::default()
    });
    expired
        .metadata_mut()
        .insert("token", token.parse().expect("token metadata"));
    let refused = kv.range(expired).await.expect_err("an expired token");
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
}

//! An "HPACK bomb" against a running `shoal kv`: header blocks that add one 4000-byte entry to
//! the dynamic table and then name it a million times (4 GB once decoded, from 1 MB on the
//! wire). The client listener's header shim refuses each at its decoded-size bound, the
//! member's memory stays bounded (VmRSS before and after is printed) and it keeps serving.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use shoal_harness::{StoreCluster, StoreKind};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const CONNECTIONS: usize = 8;
const REFERENCES: usize = 1_000_000;
const ENTRY: usize = 4000;

fn frame(out: &mut Vec<u8>, frame_type: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend([frame_type, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The connection preface, SETTINGS and the bomb as HEADERS and CONTINUATION frames.
fn bomb() -> Vec<u8> {
    let value = vec![b'a'; ENTRY];
    // The encoder indexes a new field; index 62 is the dynamic table's first entry.
    let mut block = loona_hpack::Encoder::new().encode([(&b"x-bomb"[..], &value[..])]);
    let literal = block.len();
    block.extend(std::iter::repeat_n(0x80 | 62, REFERENCES));
    let start = loona_hpack::Decoder::new()
        .decode(&block[..literal + 20])
        .expect("the bomb's start is valid HPACK");
    assert!(
        start.len() == 21 && start[20].1 == value,
        "every reference names the entry"
    );
    let mut wire = PREFACE.to_vec();
    frame(&mut wire, 0x4, 0, 0, &[]);
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let frame_type = if i == 0 { 0x1 } else { 0x9 };
        let end_headers = if i + 1 == chunks.len() { 0x4 } else { 0 };
        frame(&mut wire, frame_type, end_headers, 1, chunk);
    }
    wire
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn an_hpack_bomb_is_refused_with_bounded_memory() {
    let cluster = StoreCluster::start(StoreKind::ShoalKv, 1);
    let pid = cluster.process(0).expect("running").pid();
    let endpoint = cluster.specs[0].endpoint();
    let wire = bomb();
    let before = rss_kib(pid);
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (wire, endpoint) = (wire.clone(), endpoint.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(&endpoint).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                // The member may close the connection before it has read everything.
                let _ = stream.write_all(&wire);
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).is_ok()
            })
        })
        .collect();
    let closed = senders
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .filter(|closed| *closed)
        .count();
    let after = rss_kib(pid);
    println!(
        "{CONNECTIONS} connections x {} KiB of HPACK ({} MiB each once decoded): \
         VmRSS {before} KiB before, {after} KiB after (+{} KiB); {closed} closed by the member",
        wire.len() / 1024,
        ENTRY * REFERENCES / (1024 * 1024),
        after.saturating_sub(before)
    );
    assert_eq!(
        closed, CONNECTIONS,
        "the member closes every bombing connection"
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "VmRSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        cluster
            .ctl(&["put", "/after-the-bomb", "1"])
            .expect("put")
            .trim(),
        "OK"
    );
}

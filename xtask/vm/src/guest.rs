//! Talking to a running guest from the host side of the cluster: its command server (port
//! 7022, started by the guest init) and plain HTTP (the agent's health endpoint, workloads).
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use crate::{Error, IoContext, Result, netns};

/// Port of the guest's command server (`nc -ll -p 7022 -e /bin/shoal-exec`).
pub const EXEC_PORT: u16 = 7022;
const RC_MARKER: &str = "SHOAL-EXEC-RC ";

/// What a command run in a guest printed (stdout and stderr together) and its exit code.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub rc: i32,
    pub output: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.rc == 0
    }
}

/// Runs `script` with the guest's `sh` on `address`, from inside namespace `namespace`.
pub fn exec(
    namespace: &str,
    address: Ipv4Addr,
    script: &str,
    timeout: Duration,
) -> Result<ExecOutput> {
    let target = SocketAddr::from((address, EXEC_PORT));
    let mut stream = netns::connect(namespace, target, timeout)?;
    let request = format!("{}\n", base64(script.as_bytes()));
    stream
        .write_all(request.as_bytes())
        .context(|| format!("sending a command to {target}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .context(|| format!("reading the answer of {target} to `{script}`"))?;
    parse_exec_reply(&String::from_utf8_lossy(&reply)).ok_or_else(|| Error::Guest {
        node: address.to_string(),
        message: format!("command server gave no exit code for `{script}`"),
    })
}

fn parse_exec_reply(reply: &str) -> Option<ExecOutput> {
    let (output, rc_line) = reply
        .trim_end()
        .rsplit_once(RC_MARKER)
        .or_else(|| reply.trim_end().strip_prefix(RC_MARKER).map(|rc| ("", rc)))?;
    Some(ExecOutput {
        rc: rc_line.trim().parse().ok()?,
        output: output.to_string(),
    })
}

/// An HTTP/1.0 GET from inside namespace `namespace`: the status code and body.
pub fn http_get(
    namespace: &str,
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut stream = netns::connect(namespace, target, timeout)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .context(|| format!("sending GET {path} to {target}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .context(|| format!("reading the answer to GET {path} from {target}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("GET {path} from {target}: no HTTP status")))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (i, byte)| {
            word | u32::from(*byte) << (16 - 8 * i)
        });
        for position in 0..4 {
            if position <= chunk.len() {
                let index = (word >> (18 - 6 * position)) & 0x3f;
                text.push(char::from(ALPHABET[index as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"echo hi\n"), "ZWNobyBoaQo=");
    }

    #[test]
    fn exec_reply_splits_output_and_exit_code() {
        let reply = parse_exec_reply("hello\nworld\nSHOAL-EXEC-RC 3\n").expect("parsed");
        assert_eq!(reply.rc, 3);
        assert_eq!(reply.output, "hello\nworld\n");
        let silent = parse_exec_reply("SHOAL-EXEC-RC 0\n").expect("parsed");
        assert!(silent.success());
        assert!(silent.output.is_empty());
        assert!(parse_exec_reply("cut short").is_none());
    }
}

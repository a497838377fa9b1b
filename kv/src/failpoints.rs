//! Failpoints for consistency tests (the `failpoints` feature; none of this exists without it),
//! controlled at run time the way etcd's gofail is.
//!
//! The points (the `fail` crate's `fail_point!`; an action is the crate's syntax: `panic`,
//! `return`, `sleep(1000)`, `pause`, `print`, `1*return`, `3*off->return`, ...):
//!
//! | name | where | `return` means |
//! | --- | --- | --- |
//! | `raftlog::append` | before the log writes entries | the write fails (EIO) |
//! | `raftlog::fsync` | before the log's fdatasync | the fdatasync fails (EIO) |
//! | `raftlog::skip_fsync` | instead of the log's fdatasync | appends are acknowledged without it: the deliberately broken build a consistency suite must catch |
//! | `raftlog::power_loss` | at the start of an append | a [`power_loss`] right there |
//! | `raftlog::purge` | before the log purges what a snapshot holds | the purge fails |
//! | `snapshot::build` | before the state machine builds a snapshot | the build fails |
//! | `snapshot::install` | before a follower installs a snapshot | the install fails |
//!
//! Control: `FAILPOINTS="name=action;name=action"` sets points at start (the crate's
//! `FailScenario`); `SHOAL_KV_FAILPOINTS_ADDR=host:port` serves a small HTTP API there:
//! `PUT /<name>` with the action as the body, `DELETE /<name>`, `GET /` lists `name=action`
//! lines, and `POST /power-loss` cuts the power at once.
//!
//! A panic anywhere (a `panic` action included) kills the process with SIGKILL, as a crash
//! would: without it a panic would end one task and leave the member running half-dead.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::storage::durable::SharedLog;

/// Where the control API listens, if anywhere.
pub const ADDR_ENV: &str = "SHOAL_KV_FAILPOINTS_ADDR";
/// A request's head (request line and headers) is at most this long.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// An action is at most this long.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The open logs, for [`power_loss`] to cut.
static LOGS: Mutex<Vec<Weak<Mutex<SharedLog>>>> = Mutex::new(Vec::new());

/// Sets the points `FAILPOINTS` names, makes a panic kill the process, and serves the control
/// API if [`ADDR_ENV`] is set.
pub fn setup() -> anyhow::Result<()> {
    // The scenario holds the crate's scenario lock for good: this process is one scenario.
    std::mem::forget(fail::FailScenario::setup());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        crash();
    }));
    if let Ok(addr) = std::env::var(ADDR_ENV) {
        let listener = TcpListener::bind(&addr)
            .map_err(|e| anyhow::anyhow!("binding the failpoint API on {addr}: {e}"))?;
        tracing::warn!(%addr, "serving the failpoint control API");
        std::thread::Builder::new()
            .name("kv-failpoints".to_string())
            .spawn(move || serve(listener))?;
    }
    Ok(())
}

/// Makes `log` one of those [`power_loss`] cuts.
pub fn register_log(log: &Arc<Mutex<SharedLog>>) {
    let mut logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    logs.retain(|log| log.strong_count() > 0);
    logs.push(Arc::downgrade(log));
}

/// Simulates a power loss: every open log loses what was written but not fdatasync'ed, then the
/// process dies by SIGKILL (the page cache of a real power loss is gone with it; redb's
/// commits are synced, so nothing else is lost).
pub fn power_loss() -> ! {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    for log in logs.iter().filter_map(Weak::upgrade) {
        // Held until the end: no append may follow the cut.
        let mut shared = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = shared.file.drop_unsynced_tail() {
            tracing::error!("power loss: cutting the log's unsynced tail: {error}");
        }
        tracing::warn!("power loss");
        std::mem::forget(shared);
    }
    crash()
}

/// Ends the process as kill -9 would.
fn crash() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

fn serve(listener: TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(error) = handle(stream) {
                    tracing::warn!("failpoint API: {error}");
                }
            }
            Err(error) => tracing::warn!("failpoint API: accepting: {error}"),
        }
    }
}

/// A request of the control API.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The path without its leading `/`.
    name: String,
    body: String,
}

fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let (status, body) = match read_request(&mut reader) {
        Ok(request) => answer(&request),
        Err(why) => ("400 Bad Request", why),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn answer(request: &Request) -> (&'static str, String) {
    match (request.method.as_str(), request.name.as_str()) {
        ("GET", "") => {
            let mut points = fail::list();
            points.sort();
            let lines: String = points
                .iter()
                .map(|(name, action)| format!("{name}={action}\n"))
                .collect();
            ("200 OK", lines)
        }
        ("POST", "power-loss") => power_loss(),
        ("PUT", name) if !name.is_empty() => match fail::cfg(name, request.body.trim()) {
            Ok(()) => {
                tracing::warn!(name, action = request.body.trim(), "failpoint set");
                ("200 OK", String::new())
            }
            Err(why) => ("400 Bad Request", why),
        },
        ("DELETE", name) if !name.is_empty() => {
            fail::remove(name);
            tracing::warn!(name, "failpoint cleared");
            ("200 OK", String::new())
        }
        _ => ("404 Not Found", "no such request\n".to_string()),
    }
}

/// Reads one bounded HTTP/1.1 request.
fn read_request(reader: &mut impl BufRead) -> Result<Request, String> {
    let mut head = Vec::new();
    let mut line = String::new();
    let mut lines = Vec::new();
    loop {
        line.clear();
        let read = reader
            .by_ref()
            .take((MAX_HEAD_BYTES - head.len().min(MAX_HEAD_BYTES)) as u64)
            .read_line(&mut line)
            .map_err(|e| format!("reading the request: {e}"))?;
        if read == 0 || !line.ends_with('\n') {
            return Err("request head too long or cut short".to_string());
        }
        head.extend_from_slice(line.as_bytes());
        let trimmed = line.trim_end().to_string();
        if trimmed.is_empty() {
            break;
        }
        lines.push(trimmed);
    }
    let request_line = lines.first().ok_or("no request line")?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().ok_or("no method")?.to_string();
    let path = parts.next().ok_or("no path")?;
    let name = path.strip_prefix('/').ok_or("the path must start with /")?;
    let length = lines[1..]
        .iter()
        .filter_map(|header| header.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()
        .map_err(|e| format!("bad Content-Length: {e}"))?
        .unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(format!("a body of {length} bytes is over {MAX_BODY_BYTES}"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(Request {
        method,
        name: name.to_string(),
        body: String::from_utf8(body).map_err(|_| "the body is not UTF-8")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_request_names_the_point_and_carries_the_action() {
        let raw = "PUT /raftlog::fsync HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nsleep(100)";
        let request = read_request(&mut raw.as_bytes()).expect("parses");
        assert_eq!(
            request,
            Request {
                method: "PUT".to_string(),
                name: "raftlog::fsync".to_string(),
                body: "sleep(100)".to_string(),
            }
        );
    }

    #[test]
    fn an_oversized_body_or_head_is_refused() {
        let raw = format!(
            "PUT /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert!(read_request(&mut raw.as_bytes()).is_err());
        let raw = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(read_request(&mut raw.as_bytes()).is_err());
    }

    #[test]
    fn points_are_set_listed_and_cleared_through_the_api() {
        let put = |name: &str, action: &str| Request {
            method: "PUT".to_string(),
            name: name.to_string(),
            body: action.to_string(),
        };
        assert_eq!(answer(&put("test::api", "sleep(1)")).0, "200 OK");
        assert_eq!(
            answer(&put("test::api", "not an action")).0,
            "400 Bad Request"
        );
        let list = Request {
            method: "GET".to_string(),
            name: String::new(),
            body: String::new(),
        };
        assert!(answer(&list).1.contains("test::api=sleep(1)\n"));
        let delete = Request {
            method: "DELETE".to_string(),
            name: "test::api".to_string(),
            body: String::new(),
        };
        assert_eq!(answer(&delete).0, "200 OK");
        assert!(!answer(&list).1.contains("test::api"));
    }
}

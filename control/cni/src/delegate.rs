//! Running a delegate plugin (`bridge`, `ptp`, ...) found in `CNI_PATH`, as libcni's invoke
//! does: the same `CNI_*` environment with `CNI_COMMAND` set, the config on stdin, its result
//! on stdout; a failing delegate's error object is passed on unchanged.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::error::{CniError, code};

/// The first executable named `kind` in the `:`-separated `cni_path`.
pub fn find(kind: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    let valid_name = !kind.is_empty() && !kind.contains('/') && kind != "." && kind != "..";
    let found = cni_path
        .split(':')
        .filter(|dir| !dir.is_empty() && valid_name)
        .map(|dir| Path::new(dir).join(kind))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        });
    found.ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("failed to find plugin {kind:?} in path [{cni_path}]"),
        )
    })
}

/// Runs `plugin` for `command` (`ADD`, `CHECK`, `DEL`) with `config` on stdin; its stdout.
pub fn run(plugin: &Path, command: &str, config: &[u8]) -> Result<Vec<u8>, CniError> {
    let failed = |what: &str, err: std::io::Error| {
        CniError::new(code::IO, format!("{what} {}", plugin.display())).with_details(err)
    };
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| failed("running", err))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that fails early may exit without reading: its exit tells why.
        match stdin.write_all(config) {
            Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(failed("writing the config to", err));
            }
            _ => {}
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|err| failed("waiting for", err))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(
        serde_json::from_slice::<CniError>(&output.stdout).unwrap_or_else(|_| {
            CniError::new(
                code::IO,
                format!("{} {command} failed ({})", plugin.display(), output.status),
            )
            .with_details(String::from_utf8_lossy(&output.stdout))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        let mut permissions = std::fs::metadata(&path).expect("stat").permissions();
        permissions.set_mode(0o755);
        std::fs::set_permissions(&path, permissions).expect("chmod");
    }

    #[test]
    fn found_in_cni_path_and_run_with_the_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        script(
            dir.path(),
            "echoer",
            "cat >/dev/null; echo \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\"}\"",
        );
        std::fs::write(dir.path().join("not-executable"), "").expect("write");
        let cni_path = format!("/nonexistent:{}", dir.path().display());
        let plugin = find("echoer", &cni_path).expect("found");
        assert_eq!(
            run(&plugin, "CHECK", b"{}").expect("runs"),
            b"{\"cmd\":\"CHECK\"}\n"
        );
        for missing in ["not-executable", "absent", "../echoer", ""] {
            let err = find(missing, &cni_path).expect_err(missing);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        }
    }

    #[test]
    fn a_delegates_error_object_passes_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        script(
            dir.path(),
            "refuser",
            "echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"bad bridge\",\"details\":\"x\"}'; exit 1",
        );
        script(dir.path(), "crasher", "echo garbage; exit 2");
        let err = run(&dir.path().join("refuser"), "ADD", b"{}").expect_err("fails");
        assert_eq!(err, CniError::new(7, "bad bridge").with_details("x"));
        let err = run(&dir.path().join("crasher"), "ADD", b"{}").expect_err("fails");
        assert_eq!(err.code, code::IO);
        assert!(err.details.contains("garbage"), "{err}");
    }
}

//! The host side of a cloud-config: the host name, users, SSH keys and files, done at every
//! agent start (as cloudinit ran at every boot). What the host does not permit or lacks (no
//! `useradd`, no right to set the host name) is a warning; a file that cannot be written is
//! an error, since units may depend on it.
use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Group, Uid, User};

use super::mapping::{FileToWrite, NewUser, Setup};

/// Sets up the host name, users, SSH keys and files of `setup`, in cloudinit's order.
pub fn provision(setup: &Setup) -> Result<()> {
    if let Some(hostname) = &setup.hostname {
        set_hostname(hostname);
    }
    for user in &setup.users {
        create_user(user);
    }
    if !setup.ssh_authorized_keys.is_empty() {
        let owner = User::from_name("core")
            .ok()
            .flatten()
            .or_else(|| User::from_uid(Uid::from_raw(0)).ok().flatten());
        match owner {
            Some(owner) => add_authorized_keys(&owner, &setup.ssh_authorized_keys)?,
            None => tracing::warn!(
                "cloud-config: ssh_authorized_keys: neither `core` nor root is in the user database"
            ),
        }
    }
    for file in &setup.files {
        write_file(file)?;
    }
    Ok(())
}

fn set_hostname(hostname: &str) {
    // The UTS namespace's name, as gethostname(2) gives it.
    let current = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if current.trim_end() == hostname {
        return;
    }
    // SAFETY: sethostname(2) with a pointer and length of a live byte slice.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc == 0 {
        tracing::info!(hostname, "cloud-config: host name set");
    } else {
        tracing::warn!(
            hostname,
            "cloud-config: hostname: the host name cannot be set here ({}); it stays as it is",
            std::io::Error::last_os_error()
        );
    }
}

/// Where the host's `useradd` is, if it has one.
fn useradd() -> Option<PathBuf> {
    ["/usr/sbin/useradd", "/sbin/useradd", "/usr/bin/useradd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn create_user(user: &NewUser) {
    let existing = User::from_name(&user.name).ok().flatten();
    let account = match existing {
        Some(account) => {
            // As cloudinit: an existing user keeps everything but gets the password hash.
            if let Some(hash) = &user.password_hash {
                set_password(&user.name, hash);
            }
            Some(account)
        }
        None => match useradd() {
            None => {
                tracing::warn!(
                    user = %user.name,
                    "cloud-config: users: this host has no useradd: the user is not created"
                );
                return;
            }
            Some(useradd) => {
                let status = std::process::Command::new(&useradd)
                    .args(useradd_args(user))
                    .status();
                match status {
                    Ok(status) if status.success() => {
                        tracing::info!(user = %user.name, "cloud-config: user created");
                    }
                    Ok(status) => {
                        tracing::warn!(user = %user.name, "cloud-config: useradd failed ({status})")
                    }
                    Err(err) => {
                        tracing::warn!(user = %user.name, "cloud-config: running useradd: {err}")
                    }
                }
                User::from_name(&user.name).ok().flatten()
            }
        },
    };
    if let Some(account) = account
        && !user.ssh_authorized_keys.is_empty()
        && let Err(err) = add_authorized_keys(&account, &user.ssh_authorized_keys)
    {
        tracing::warn!(user = %user.name, "cloud-config: users: {err:#}");
    }
}

/// Sets an existing user's password hash with the host's `chpasswd -e`.
fn set_password(name: &str, hash: &str) {
    let Some(chpasswd) = ["/usr/sbin/chpasswd", "/sbin/chpasswd"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.is_file())
    else {
        tracing::warn!(
            user = name,
            "cloud-config: users: no chpasswd here: the password is not set"
        );
        return;
    };
    let outcome = std::process::Command::new(chpasswd)
        .arg("-e")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(format!("{name}:{hash}\n").as_bytes())?;
            }
            child.wait()
        });
    match outcome {
        Ok(status) if status.success() => tracing::info!(user = name, "cloud-config: password set"),
        Ok(status) => tracing::warn!(user = name, "cloud-config: chpasswd failed ({status})"),
        Err(err) => tracing::warn!(user = name, "cloud-config: running chpasswd: {err}"),
    }
}

/// `useradd`'s arguments for `user` (as cloudinit's `CreateUser` passed them).
pub fn useradd_args(user: &NewUser) -> Vec<String> {
    let mut args = Vec::new();
    let mut option = |flag: &str, value: &Option<String>| {
        if let Some(value) = value {
            args.extend([flag.to_string(), value.clone()]);
        }
    };
    option("--password", &user.password_hash);
    option("--home-dir", &user.homedir);
    option("--comment", &user.gecos);
    option("--gid", &user.primary_group);
    option("--shell", &user.shell);
    if !user.groups.is_empty() {
        args.extend(["--groups".to_string(), user.groups.join(",")]);
    }
    args.push(
        if user.no_create_home {
            "--no-create-home"
        } else {
            "--create-home"
        }
        .to_string(),
    );
    if user.no_user_group {
        args.push("--no-user-group".into());
    }
    if user.system {
        args.push("--system".into());
    }
    args.push(user.name.clone());
    args
}

/// `existing` with every key of `keys` it lacks appended, one per line; `None` if it has them.
pub fn merge_authorized_keys(existing: &str, keys: &[String]) -> Option<String> {
    let mut present: Vec<&str> = existing.lines().map(str::trim).collect();
    let mut merged = existing.to_string();
    let mut added = false;
    for key in keys {
        let key = key.trim();
        if key.is_empty() || present.contains(&key) {
            continue;
        }
        if !merged.is_empty() && !merged.ends_with('\n') {
            merged.push('\n');
        }
        merged.push_str(key);
        merged.push('\n');
        present.push(key);
        added = true;
    }
    added.then_some(merged)
}

fn add_authorized_keys(owner: &User, keys: &[String]) -> Result<()> {
    let ssh_dir = owner.dir.join(".ssh");
    let file = ssh_dir.join("authorized_keys");
    let existing = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", file.display())),
    };
    let Some(merged) = merge_authorized_keys(&existing, keys) else {
        return Ok(());
    };
    if !ssh_dir.is_dir() {
        std::fs::create_dir_all(&ssh_dir)
            .with_context(|| format!("creating {}", ssh_dir.display()))?;
        std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {}", ssh_dir.display()))?;
        chown(&ssh_dir, Some(owner.uid), Some(owner.gid))?;
    }
    replace_file(&file, merged.as_bytes(), 0o600)?;
    chown(&file, Some(owner.uid), Some(owner.gid))?;
    tracing::info!(user = %owner.name, file = %file.display(), "cloud-config: SSH keys added");
    Ok(())
}

/// Writes one of `write_files`: through a temporary file renamed into place (or appended),
/// then its mode and owner.
pub fn write_file(file: &FileToWrite) -> Result<()> {
    let path = Path::new(&file.path);
    let uid = match &file.owner {
        Some(name) => Some(user_id(name)?),
        None => None,
    };
    let gid = match &file.group {
        Some(name) => Some(group_id(name)?),
        None => None,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    if file.append {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(file.mode)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        out.write_all(&file.content)
            .with_context(|| format!("appending to {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(file.mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    } else {
        replace_file(path, &file.content, file.mode)?;
    }
    chown(path, uid, gid)?;
    tracing::info!(
        path = %path.display(),
        mode = format!("{:04o}", file.mode),
        "cloud-config: file written"
    );
    Ok(())
}

fn replace_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let mut temp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("creating a file in {}", parent.display()))?;
    temp.write_all(content)
        .with_context(|| format!("writing {}", path.display()))?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    temp.persist(path)
        .with_context(|| format!("putting {} in place", path.display()))?;
    Ok(())
}

fn user_id(name: &str) -> Result<Uid> {
    if let Ok(id) = name.parse() {
        return Ok(Uid::from_raw(id));
    }
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid),
        _ => bail!("no user `{name}` on this host"),
    }
}

fn group_id(name: &str) -> Result<Gid> {
    if let Ok(id) = name.parse() {
        return Ok(Gid::from_raw(id));
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => bail!("no group `{name}` on this host"),
    }
}

fn chown(path: &Path, uid: Option<Uid>, gid: Option<Gid>) -> Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    nix::unistd::chown(path, uid, gid)
        .with_context(|| format!("changing the owner of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_appended_once() {
        let existing = "ssh-ed25519 AAAA one";
        let merged = merge_authorized_keys(
            existing,
            &[
                "ssh-ed25519 AAAA one".into(),
                "ssh-rsa BBBB two".into(),
                "ssh-rsa BBBB two".into(),
            ],
        )
        .expect("one key is new");
        assert_eq!(merged, "ssh-ed25519 AAAA one\nssh-rsa BBBB two\n");
        assert_eq!(
            merge_authorized_keys(&merged, &["ssh-rsa BBBB two".into()]),
            None
        );
    }

    #[test]
    fn useradd_gets_cloudinits_options() {
        let user = NewUser {
            name: "elroy".into(),
            password_hash: Some("$6$hash".into()),
            groups: vec!["sudo".into(), "docker".into()],
            ssh_authorized_keys: vec![],
            homedir: Some("/home/elroy".into()),
            shell: Some("/bin/bash".into()),
            gecos: None,
            primary_group: None,
            no_create_home: false,
            no_user_group: false,
            system: false,
        };
        assert_eq!(
            useradd_args(&user),
            [
                "--password",
                "$6$hash",
                "--home-dir",
                "/home/elroy",
                "--shell",
                "/bin/bash",
                "--groups",
                "sudo,docker",
                "--create-home",
                "elroy"
            ]
        );
    }
}

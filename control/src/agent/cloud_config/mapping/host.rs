//! The host's share: its name, users, SSH keys and files.
use base64::Engine as _;

use super::{Builder, FileToWrite, Invalid, NewUser, Setup, invalid};
use crate::agent::cloud_config::schema::{User, WriteFile};

pub(super) fn hostname(
    hostname: Option<&str>,
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(), Invalid> {
    let Some(hostname) = hostname else {
        return Ok(());
    };
    let valid = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(invalid(
            "hostname",
            format!("`{hostname}` is not a host name"),
        ));
    }
    setup.hostname = Some(hostname.to_string());
    builder.note(
        "hostname",
        format!("the host name set to `{hostname}` (sethostname, where permitted)"),
    );
    Ok(())
}

pub(super) fn users(
    users: &[User],
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(), Invalid> {
    for (index, user) in users.iter().enumerate() {
        let key = format!("users[{index}]");
        builder.others(&key, &user.other);
        let valid_name = !user.name.is_empty()
            && user.name.len() <= 32
            && !user.name.starts_with('-')
            && user
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is not a user name", user.name),
            ));
        }
        builder.note(
            &key,
            format!(
                "user `{}` created with useradd if absent (an existing one gets only the \
                 password and keys){}{}",
                user.name,
                if user.groups.is_empty() {
                    String::new()
                } else {
                    format!(", in groups {}", user.groups.join(","))
                },
                if user.ssh_authorized_keys.is_empty() {
                    String::new()
                } else {
                    format!(", {} ssh key(s)", user.ssh_authorized_keys.len())
                }
            ),
        );
        setup.users.push(NewUser {
            name: user.name.clone(),
            password_hash: user.passwd.clone(),
            groups: user.groups.clone(),
            ssh_authorized_keys: user.ssh_authorized_keys.clone(),
            homedir: user.homedir.clone(),
            shell: user.shell.clone(),
            gecos: user.gecos.clone(),
            primary_group: user.primary_group.clone(),
            no_create_home: user.no_create_home,
            no_user_group: user.no_user_group,
            system: user.system,
        });
    }
    Ok(())
}

fn file_to_write(key: &str, file: &WriteFile) -> Result<FileToWrite, Invalid> {
    if !file.path.starts_with('/') {
        return Err(invalid(
            format!("{key}.path"),
            format!("`{}` is not an absolute path", file.path),
        ));
    }
    let content = decode(&file.content, file.encoding.as_deref())
        .map_err(|message| invalid(format!("{key}.content"), message))?;
    let mode = match &file.permissions {
        None => 0o644,
        Some(text) => parse_mode(text).ok_or_else(|| {
            invalid(
                format!("{key}.permissions"),
                format!("`{text}` is not an octal mode such as 0644"),
            )
        })?,
    };
    let (owner, group) = match file.owner.as_deref() {
        None | Some("") => (None, None),
        Some(owner) => {
            let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
            let some = |text: &str| (!text.is_empty()).then(|| text.to_string());
            (some(user), some(group))
        }
    };
    Ok(FileToWrite {
        path: file.path.clone(),
        content,
        mode,
        owner,
        group,
        append: file.append,
    })
}

/// `0644`, `644`, `0755`, `1777`: three or four octal digits, with an optional leading 0.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim();
    let digits = if digits.len() == 5 {
        digits.strip_prefix('0')?
    } else {
        digits
    };
    if !(3..=4).contains(&digits.len()) || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

/// cloudinit's encodings: base64, gzip, or gzip inside base64.
fn decode(content: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    let base64 = |text: &str| {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|err| format!("not base64: {err}"))
    };
    let gunzip = |bytes: &[u8]| {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|err| format!("not gzip: {err}"))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("more than {MAX_FILE_BYTES} bytes once unpacked"));
        }
        Ok(out)
    };
    match encoding.unwrap_or("") {
        "" => Ok(content.as_bytes().to_vec()),
        "b64" | "base64" => base64(content),
        "gz" | "gzip" => gunzip(content.as_bytes()),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&base64(content)?),
        other => Err(format!(
            "unknown encoding `{other}` (b64, base64, gz, gzip, gz+b64, gzip+base64, ...)"
        )),
    }
}

/// A file written by cloud-config is at most this big once decoded (a gzip bomb stops here).
const MAX_FILE_BYTES: u64 = 64 << 20;

pub(super) fn ssh_authorized_keys(
    keys: &[String],
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(), Invalid> {
    for (index, key) in keys.iter().enumerate() {
        if key.trim().is_empty() {
            return Err(invalid(format!("ssh_authorized_keys[{index}]"), "is empty"));
        }
    }
    if !keys.is_empty() {
        setup.ssh_authorized_keys = keys.to_vec();
        builder.note(
            "ssh_authorized_keys",
            format!(
                "{} key(s) appended to the `core` user's ~/.ssh/authorized_keys (root's if there \
                 is no `core`), each once",
                keys.len()
            ),
        );
    }
    Ok(())
}

pub(super) fn write_files(
    files: &[WriteFile],
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(), Invalid> {
    for (index, file) in files.iter().enumerate() {
        let key = format!("write_files[{index}]");
        builder.others(&key, &file.other);
        let file = file_to_write(&key, file)?;
        let owner = match (&file.owner, &file.group) {
            (None, None) => String::new(),
            (user, group) => format!(
                ", owner {}:{}",
                user.as_deref().unwrap_or(""),
                group.as_deref().unwrap_or("")
            ),
        };
        builder.note(
            &key,
            format!(
                "{} {} ({} bytes, mode {:04o}{owner})",
                if file.append { "append to" } else { "write" },
                file.path,
                file.content.len(),
                file.mode,
            ),
        );
        setup.files.push(file);
    }
    Ok(())
}

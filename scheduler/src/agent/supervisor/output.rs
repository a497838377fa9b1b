//! A unit's output file, `<unit dir>/output.log`: where its processes write and the supervisor
//! notes what it does; what `fleetctl journal` shows. Kept bounded.

use std::{io::Write as _, path::Path};

pub(super) const OUTPUT_FILE: &str = "output.log";
/// Output files are cut back to their tail when they grow past this.
const MAX_OUTPUT_BYTES: u64 = 4 << 20;

pub(super) fn open_output(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(OUTPUT_FILE))
}

pub(super) fn append_output(dir: &Path, line: &str) {
    if let Ok(mut file) = open_output(dir) {
        let _ = writeln!(file, "{line}");
    }
}

/// Keeps the output file bounded: past the limit it is cut to its last half.
pub(super) fn trim_output(dir: &Path) {
    let path = dir.join(OUTPUT_FILE);
    let Ok(metadata) = std::fs::metadata(&path) else {
        return;
    };
    if metadata.len() <= MAX_OUTPUT_BYTES {
        return;
    }
    if let Ok(bytes) = std::fs::read(&path) {
        let keep = &bytes[bytes.len() - (MAX_OUTPUT_BYTES as usize / 2)..];
        let _ = std::fs::write(&path, keep);
    }
}

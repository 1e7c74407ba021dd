//! The trainer's own file writes (checkpoints, metrics, plots, synthetic data):
//! atomic (temp file beside the target, synced, renamed over it) with the mode
//! a plain `File::create` would give, and the clean-up of temp files that a
//! killed run left behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Result, TrainError};

/// Name prefix of the temp files written here (and by `unet_models::io`).
pub const TEMP_PREFIX: &str = ".tmp-";
/// Length of tempfile's random name part.
const TEMP_RANDOM_LEN: usize = 6;

fn io_error(path: &Path, what: &str, source: std::io::Error) -> TrainError {
    TrainError::Io {
        dir: path.to_path_buf(),
        what: what.to_string(),
        source: unet_models::io::without_temp_path(source),
    }
}

/// Writes `bytes` to `path` so readers see the old file or the whole new one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).rand_bytes(TEMP_RANDOM_LEN);
    // tempfile creates 0600 files; ask for 0666 so the umask decides, as for File::create.
    #[cfg(unix)]
    builder
        .permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(&dir)
        .map_err(|e| io_error(path, "cannot write", e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| io_error(path, "cannot write", e))?;
    tmp.persist(path)
        .map_err(|e| io_error(path, "cannot write", e.error))?;
    Ok(())
}

/// Whether `name` has the shape of our temp files: the prefix and tempfile's
/// random part (alphanumeric), nothing else.
fn is_our_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| {
        rest.len() == TEMP_RANDOM_LEN && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// Removes the temp files of our naming pattern in `dir` last modified before
/// `started` (a killed run's; a live writer's are newer). Returns the files
/// removed and their total size in bytes.
pub fn remove_stale_temps(dir: &Path, started: SystemTime) -> Result<(Vec<PathBuf>, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io_error(dir, "cannot list the output folder", e)),
    };
    let (mut removed, mut bytes) = (Vec::new(), 0);
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_our_temp_name) {
            continue;
        }
        // symlink_metadata: a link or folder of that name is not ours to delete.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let stale = meta.modified().is_ok_and(|m| m < started);
        if meta.is_file() && stale {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|e| io_error(&path, "cannot remove a stale temp file", e))?;
            bytes += meta.len();
            removed.push(path);
        }
    }
    removed.sort();
    Ok((removed, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_temp_names_match() {
        assert!(is_our_temp_name(".tmp-a1B2c3"));
        for other in [
            ".tmp-",
            ".tmp-abc",
            ".tmp-abcdefg",
            "tmp-abcdef",
            ".tmp-ab.def",
            "x",
        ] {
            assert!(!is_our_temp_name(other), "{other}");
        }
    }
}

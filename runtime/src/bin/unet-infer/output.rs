//! Where results go: one output name per input (never two inputs onto one
//! file, never an existing file without `--overwrite`), written completely or
//! not at all.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The output stem of each input: its file stem, or stem and extension where
/// two inputs share a stem (`a.jpg` and `a.png` -> `a_jpg`, `a_png`).
pub fn output_stems(inputs: &[PathBuf]) -> Result<Vec<String>> {
    let stem = |p: &Path| {
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in inputs {
        *counts.entry(stem(p)).or_default() += 1;
    }
    let stems: Vec<String> = inputs
        .iter()
        .map(|p| {
            let s = stem(p);
            match p.extension() {
                Some(ext) if counts[&s] > 1 => format!("{s}_{}", ext.to_string_lossy()),
                _ => s,
            }
        })
        .collect();
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for (s, p) in stems.iter().zip(inputs) {
        if let Some(first) = seen.insert(s, p) {
            bail!(
                "{} and {} would both write {s}_mask.png; segment them into separate -o directories",
                first.display(),
                p.display()
            );
        }
    }
    Ok(stems)
}

/// Fails, before any work, when an output exists and may not be replaced.
pub fn check_free(paths: &[PathBuf], overwrite: bool) -> Result<()> {
    if overwrite {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists (pass --overwrite to replace outputs)",
            p.display()
        );
    }
    Ok(())
}

/// Writes `bytes` through a temporary file beside `path`, synced to disk
/// before the rename, so a crash or a full disk never leaves a partial or
/// empty file under the real name. The file gets the mode `File::create`
/// would give it (tempfile's default is 0600: unreadable to a shared folder's
/// other users).
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".unet-infer-");
    #[cfg(unix)]
    {
        // The OS takes the umask off, as for `File::create`.
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w).with_context(|| format!("encoding {}", path.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_stems_keep_their_extension() {
        let stems = output_stems(&["x/a.jpg".into(), "x/a.png".into(), "b.png".into()]).unwrap();
        assert_eq!(stems, ["a_jpg", "a_png", "b"]);
        assert!(output_stems(&["x/a.png".into(), "y/a.png".into()]).is_err());
    }
}

//! Where a model came from, as Ultralytics records it: the training size,
//! class names, date, tool and version, a fingerprint of the training files
//! and the git commit of the training directory when there is one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};
use crate::keys;

/// Metadata [`keys::PROVENANCE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// `[height, width]`, Ultralytics' order.
    pub imgsz: [usize; 2],
    /// Class index -> name.
    pub names: BTreeMap<usize, String>,
    /// UTC, RFC 3339 (`2026-11-24T13:17:39Z`).
    pub date: String,
    /// Program and version that trained the weights (`unet-train 0.1.0`).
    pub tool: String,
    /// [`fingerprint`] of the training files (names and sizes), and their number.
    pub data_fingerprint: String,
    pub data_files: usize,
    /// `git rev-parse HEAD` where training ran, if it ran in a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
}

impl Provenance {
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| SpecError::BadMetadata {
            key: keys::PROVENANCE.into(),
            reason: e.to_string(),
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Ultralytics-style top-level entries (`imgsz`, `names`) for readers
    /// that know those.
    pub fn ultralytics_entries(&self) -> [(&'static str, String); 2] {
        [
            (
                keys::IMGSZ,
                serde_json::to_string(&self.imgsz).unwrap_or_default(),
            ),
            (
                keys::NAMES,
                serde_json::to_string(&self.names).unwrap_or_default(),
            ),
        ]
    }
}

/// FNV-1a (64-bit) over the items, order-independent: a cheap identity for a
/// file list, not a security hash.
pub fn fingerprint<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut items: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
    items.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for item in &items {
        for b in item.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Seconds since the Unix epoch as RFC 3339 UTC (no time-zone database needed).
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1795526259`
        assert_eq!(rfc3339_utc(1_795_526_259), "2026-11-24T13:17:39Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn fingerprint_ignores_order_and_sees_changes() {
        let a = fingerprint(["a.jpg:10", "b.jpg:20"]);
        assert_eq!(a, fingerprint(["b.jpg:20", "a.jpg:10"]));
        assert_ne!(a, fingerprint(["a.jpg:10", "b.jpg:21"]));
        assert_ne!(fingerprint(["ab", "c"]), fingerprint(["a", "bc"]));
        assert_eq!(a.len(), 16);
    }
}

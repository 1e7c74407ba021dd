//! The parity report: one table per back end, its text form (what
//! `unet-export` prints) and its JSON form (`--report FILE.json`).

use std::fmt;

use super::{Stats, Tolerance};

/// One case on one back end.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub input_shape: [usize; 4],
    pub output_shape: Option<[usize; 4]>,
    pub result: std::result::Result<Stats, String>,
}

#[derive(Debug, Clone)]
pub struct BackendReport {
    pub backend: String,
    pub provider: String,
    pub rows: Vec<Row>,
    /// Set when the back end could not load the file at all.
    pub error: Option<String>,
}

impl BackendReport {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self
                .rows
                .iter()
                .all(|r| r.result.as_ref().is_ok_and(Stats::passed))
    }
}

/// The whole check: one table per back end.
#[derive(Debug, Clone)]
pub struct Report {
    pub reference: String,
    pub tolerance: Tolerance,
    pub backends: Vec<BackendReport>,
    /// Back ends not run, with the reason (e.g. no ONNX Runtime library).
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// True when at least one back end ran and every one passed.
    pub fn passed(&self) -> bool {
        !self.backends.is_empty() && self.backends.iter().all(BackendReport::passed)
    }

    /// The machine-readable form of the tables, for CI artefacts and dashboards.
    /// Non-finite errors (a NaN output) become `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let backends: Vec<_> = self
            .backends
            .iter()
            .map(|b| {
                let rows: Vec<_> = b
                    .rows
                    .iter()
                    .map(|r| {
                        let mut row = json!({
                            "case": r.case,
                            "input_shape": r.input_shape,
                            "output_shape": r.output_shape,
                        });
                        match &r.result {
                            Ok(s) => {
                                row["max_abs"] = json!(s.max_abs);
                                row["max_rel"] = json!(s.max_rel);
                                row["mean_abs"] = json!(s.mean_abs);
                                row["dice"] = json!(s.dice);
                                row["mismatches"] = json!(s.mismatches);
                                row["non_finite"] = json!(s.non_finite);
                                row["count"] = json!(s.count);
                                row["passed"] = json!(s.passed());
                            }
                            Err(e) => {
                                row["error"] = json!(e);
                                row["passed"] = json!(false);
                            }
                        }
                        row
                    })
                    .collect();
                json!({
                    "backend": b.backend,
                    "provider": b.provider,
                    "error": b.error,
                    "passed": b.passed(),
                    "cases": rows,
                })
            })
            .collect();
        let skipped: Vec<_> = self
            .skipped
            .iter()
            .map(|(name, why)| json!({ "backend": name, "reason": why }))
            .collect();
        json!({
            "reference": self.reference,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "passed": self.passed(),
            "backends": backends,
            "skipped": skipped,
        })
    }
}

pub(crate) fn shape_str(s: &[usize; 4]) -> String {
    format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3])
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.backends {
            let provider = if b.provider.is_empty() || b.provider == b.backend {
                String::new()
            } else {
                format!(" ({})", b.provider)
            };
            writeln!(
                f,
                "{}{provider} vs {}, atol {:e}, rtol {:e}:",
                b.backend, self.reference, self.tolerance.atol, self.tolerance.rtol
            )?;
            if let Some(e) = &b.error {
                writeln!(f, "  FAIL: {e}")?;
                continue;
            }
            writeln!(
                f,
                "  {:<18} {:<15} {:<15} {:>10} {:>10} {:>10} {:>8}  result",
                "case", "input", "output", "max abs", "max rel", "mean abs", "dice"
            )?;
            for r in &b.rows {
                let out = r.output_shape.as_ref().map(shape_str).unwrap_or("-".into());
                match &r.result {
                    Ok(s) => writeln!(
                        f,
                        "  {:<18} {:<15} {:<15} {:>10.3e} {:>10.3e} {:>10.3e} {:>8.4}  {}",
                        r.case,
                        shape_str(&r.input_shape),
                        out,
                        s.max_abs,
                        s.max_rel,
                        s.mean_abs,
                        s.dice,
                        if s.passed() {
                            "PASS".to_string()
                        } else if s.non_finite > 0 {
                            format!(
                                "FAIL ({} of {} outside tolerance, {} NaN or infinite)",
                                s.mismatches, s.count, s.non_finite
                            )
                        } else {
                            format!("FAIL ({} of {} outside tolerance)", s.mismatches, s.count)
                        }
                    )?,
                    Err(e) => writeln!(
                        f,
                        "  {:<18} {:<15} {:<15} FAIL: {e}",
                        r.case,
                        shape_str(&r.input_shape),
                        out
                    )?,
                }
            }
        }
        for (name, why) in &self.skipped {
            writeln!(f, "{name}: skipped ({why})")?;
        }
        write!(f, "parity: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

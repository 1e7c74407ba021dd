//! Polygraphy's JSON for saved inputs and outputs (`polygraphy run
//! --save-inputs/--save-outputs`, read back with `--load-inputs` and
//! `--load-outputs`), as `polygraphy.json.serde` encodes them:
//!
//! - an array: `{"array": base64(np.save bytes), "polygraphy_class": "ndarray"}`;
//! - `inputs.json`: a list of feed dicts, `[{"input": array}, ...]`;
//! - `outputs.json`: `RunResults`, `{"lst": [[runner, [IterationResult, ...]]],
//!   "polygraphy_class": "RunResults"}`, each `IterationResult` holding
//!   `{"outputs": {name: LazyArray}, "runtime", "runner_name"}`.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

use super::npz::npy;
use super::NamedCase;
use crate::error::Result;
use crate::runner::Tensor4 as Nchw;

/// The runner name the outputs are filed under.
pub const RUNNER_NAME: &str = "unet-export-candle";

pub(crate) fn write(
    dir: &Path,
    cases: &[NamedCase],
    input_name: &str,
    output_name: &str,
) -> Result<Vec<PathBuf>> {
    let inputs: Vec<Value> = cases
        .iter()
        .map(|c| json!({ input_name: array(c.input) }))
        .collect();
    let iterations: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "outputs": {
                    output_name: {
                        "values": array(&c.output),
                        "polygraphy_class": "LazyArray",
                    }
                },
                "runtime": 0.0,
                "runner_name": RUNNER_NAME,
                "polygraphy_class": "IterationResult",
            })
        })
        .collect();
    let outputs = json!({
        "lst": [[RUNNER_NAME, iterations]],
        "polygraphy_class": "RunResults",
    });
    let mut written = Vec::new();
    for (file, value) in [
        ("inputs.json", Value::Array(inputs)),
        ("outputs.json", outputs),
    ] {
        let path = dir.join(file);
        let text = serde_json::to_string(&value).unwrap_or_default() + "\n";
        unet_models::io::atomic_write(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

fn array(t: &Nchw) -> Value {
    json!({
        "array": base64::engine::general_purpose::STANDARD.encode(npy(t)),
        "polygraphy_class": "ndarray",
    })
}

//! The contract and provenance a trained model file carries: the geometry
//! frames were brought to (so the runtime reproduces it) and, as Ultralytics
//! records, the size, class names, date, tool, a fingerprint of the training
//! samples and the git commit of the directory training ran in.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use unet_spec::{keys, provenance, Filter, InputGeometry, Provenance, ResizeMode};

use crate::data::Source;
use crate::options::TrainOptions;

/// How training brought every frame to the network: stretched to
/// `width x height` with the shared bilinear resampler.
pub fn input_geometry(opts: &TrainOptions) -> InputGeometry {
    InputGeometry {
        width: opts.width,
        height: opts.height,
        resize: ResizeMode::Stretch,
        filter: Filter::Bilinear,
        size_multiple: opts.model.size_multiple(),
    }
}

/// `git rev-parse HEAD` in the working directory, when it is a repository.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && commit.len() >= 40).then_some(commit)
}

/// Metadata entries for a model trained with `opts` on `train` of `source`.
pub fn model_metadata(
    opts: &TrainOptions,
    source: &dyn Source,
    train: &[usize],
) -> HashMap<String, String> {
    let names: BTreeMap<usize, String> = opts.class_names.iter().cloned().enumerate().collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let p = Provenance {
        imgsz: [opts.height, opts.width],
        names,
        date: provenance::rfc3339_utc(now),
        tool: format!("unet-train {}", env!("CARGO_PKG_VERSION")),
        data_fingerprint: provenance::fingerprint(train.iter().map(|&i| source.name(i))),
        data_files: train.len(),
        git_commit: git_commit(),
    };
    let mut m = HashMap::from([
        (
            keys::INPUT_GEOMETRY.to_string(),
            input_geometry(opts).to_json(),
        ),
        (keys::PROVENANCE.to_string(), p.to_json()),
    ]);
    for (k, v) in p.ultralytics_entries() {
        m.insert(k.to_string(), v);
    }
    m
}

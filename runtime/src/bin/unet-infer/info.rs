//! `unet-infer info MODEL`: the contract a model file carries, as the runtime
//! reads it, so a device team can check what it will run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use unet_runtime::{Backend, Session, SizeRule};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Print the raw `metadata_props` as JSON instead.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let session = Session::from_file(&args.model, Backend::Tract)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let meta = session.metadata();
    if args.json {
        let sorted: std::collections::BTreeMap<_, _> = meta.iter().collect();
        println!("{}", serde_json::to_string_pretty(&sorted)?);
        return Ok(());
    }
    let info = unet_runtime::ModelInfo::from_metadata(meta, session.input_channels())
        .with_context(|| format!("reading the metadata of {}", args.model.display()))?;
    println!("model            {}", args.model.display());
    if let Some(cfg) = &info.config {
        println!("architecture     {}", cfg.to_json());
    } else {
        println!("architecture     (no unet.config: a foreign ONNX file)");
    }
    match &info.input_geometry {
        Some(g) => println!(
            "trained at       {}x{} ({}, {} filter), sizes multiple of {}",
            g.width,
            g.height,
            g.resize.as_str(),
            serde_json::to_string(&g.filter)?.trim_matches('"'),
            g.size_multiple
        ),
        None => println!("trained at       (not recorded: frames run at native resolution)"),
    }
    match info.size_rule {
        SizeRule::Same { multiple } => {
            println!("accepts          sides that are multiples of {multiple}")
        }
        SizeRule::Valid { depth } => println!(
            "accepts          `valid` sizes (depth {depth}, {} px lost per side)",
            info.size_rule.margin()
        ),
    }
    let pre = &info.preprocessing;
    println!(
        "preprocessing    {:?}, mean {:?}, std {:?}{}",
        pre.channel_order,
        pre.mean,
        pre.std,
        if info.normalize_in_graph {
            " (in the graph)"
        } else {
            ""
        }
    );
    println!(
        "head             {}, threshold {}",
        info.head, pre.threshold
    );
    println!("classes          {:?}", pre.class_names);
    match &info.provenance {
        Some(p) => {
            println!("trained by       {} on {}", p.tool, p.date);
            println!(
                "training data    {} files, fingerprint {}",
                p.data_files, p.data_fingerprint
            );
            if let Some(c) = &p.git_commit {
                println!("git commit       {c}");
            }
        }
        None => println!("provenance       (not recorded)"),
    }
    Ok(())
}

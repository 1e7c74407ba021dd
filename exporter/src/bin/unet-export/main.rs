//! `unet-export`: a self-describing safetensors U-Net in, a checked ONNX graph out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use unet_exporter::check::{self, CheckOptions, Report, Tolerance};
use unet_exporter::{golden, lower, ExportOptions, Head, InputShape};
use unet_models::candle_core::Device;
use unet_models::io::{self, ConfigSource, LoadedModel};
use unet_models::{milesial, UNetConfig};

/// Exports a U-Net to ONNX and checks that the file computes what the model computes.
///
/// Examples:
///   unet-export model.safetensors                      # model.onnx, opset 17, dynamic N/H/W, checked
///   unet-export model.safetensors --fold-bn --head sigmoid -o edge.onnx
///   unet-export model.safetensors --shape 1x3x256x256 --fp16
///   unet-export --from milesial unet_carvana.safetensors
///   unet-export check model.safetensors model.onnx
///   unet-export golden model.safetensors -o golden/ && unet-export check --golden golden/ model.onnx
///
/// Exit status: 0 success, 1 error, 2 the parity check failed (no ONNX file is left behind).
#[derive(Parser)]
#[command(
    name = "unet-export",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    export: ExportArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Compare an ONNX file with the model's candle forward pass (or saved golden outputs).
    Check(CheckArgs),
    /// Write seeded inputs and the model's outputs to DIR/golden.safetensors.
    Golden(GoldenArgs),
    /// Convert a PyTorch checkpoint into a self-describing safetensors model.
    Import(ImportArgs),
}

/// How to read the weights file.
#[derive(Args, Clone)]
struct ModelArgs {
    /// Weights layout of the input file.
    #[arg(long, value_enum, default_value_t = Source::Unet)]
    from: Source,
    /// Config JSON, for weight files without `unet.config` metadata.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Named preset, for weight files without `unet.config` metadata.
    #[arg(long)]
    preset: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Source {
    /// This project's safetensors (PyTorch-style names, config in the metadata).
    Unet,
    /// A milesial/Pytorch-UNet `state_dict` saved with safetensors.
    Milesial,
}

#[derive(Args)]
struct ExportArgs {
    /// The model weights (.safetensors).
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Output file [default: MODEL with the extension .onnx].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// ai.onnx opset, 13 to 21.
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Symbolic input axes: `batch`, `hw`, both (default) or `none`.
    #[arg(long, value_enum, value_delimiter = ',')]
    dynamic: Option<Vec<DynamicAxis>>,
    /// Input shape NxCxHxW for the axes that are not dynamic, e.g. 1x3x256x256.
    #[arg(long)]
    shape: Option<String>,
    /// Fold BatchNorm into the preceding convolutions.
    #[arg(long)]
    fold_bn: bool,
    /// f16 weights and compute; input and output stay f32.
    #[arg(long)]
    fp16: bool,
    /// Output of the graph.
    #[arg(long, value_enum, default_value_t)]
    head: Head,
    /// Put the mean/std normalisation into the graph (input: pixels in [0, 1]).
    #[arg(long)]
    normalize_in_graph: bool,
    #[command(flatten)]
    source: ModelArgs,
    #[command(flatten)]
    check: CheckFlags,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DynamicAxis {
    Batch,
    Hw,
    None,
}

#[derive(Args)]
struct CheckFlags {
    /// Skip the parity check.
    #[arg(long, conflicts_with = "report")]
    no_check: bool,
    #[command(flatten)]
    parity: ParityFlags,
}

/// How a parity check runs and reports: the export's own check and `check`.
#[derive(Args)]
struct ParityFlags {
    /// Absolute tolerance [default: 1e-4, 5e-2 for an fp16 graph].
    #[arg(long)]
    atol: Option<f32>,
    /// Relative tolerance [default: 1e-3, 5e-2 for an fp16 graph].
    #[arg(long)]
    rtol: Option<f32>,
    /// Seed of the check's random inputs and synthetic frames.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the parity report as JSON (written whether the check passes or not).
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
}

impl ParityFlags {
    fn options(&self, fp16: bool) -> CheckOptions {
        CheckOptions {
            tolerance: tolerance(self.atol, self.rtol, fp16),
            seed: self.seed,
            ..CheckOptions::default()
        }
    }
}

#[derive(Args)]
struct CheckArgs {
    /// MODEL.safetensors MODEL.onnx, or only MODEL.onnx with --golden.
    #[arg(required = true, num_args = 1..=2)]
    files: Vec<PathBuf>,
    /// Compare with the outputs saved by `unet-export golden` instead of running candle.
    #[arg(long)]
    golden: Option<PathBuf>,
    #[command(flatten)]
    source: ModelArgs,
    #[command(flatten)]
    parity: ParityFlags,
}

#[derive(Args)]
struct GoldenArgs {
    /// The model weights (.safetensors).
    model: PathBuf,
    /// Output directory.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    source: ModelArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct ImportArgs {
    /// The checkpoint (a `state_dict` saved with safetensors).
    checkpoint: PathBuf,
    /// Output file [default: CHECKPOINT with the extension .unet.safetensors].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Layout of the checkpoint.
    #[arg(long, value_enum, default_value_t = Source::Milesial)]
    from: Source,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => run_check(args),
        Some(Command::Golden(args)) => run_golden(args),
        Some(Command::Import(args)) => run_import(args),
        None => run_export(cli.export),
    }
}

fn load(path: &Path, source: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let device = Device::Cpu;
    let loaded = match source.from {
        Source::Milesial => milesial::load(path, &device)?,
        Source::Unet => {
            let cfg = match (&source.config, &source.preset) {
                (Some(p), _) => {
                    let json = std::fs::read_to_string(p)
                        .with_context(|| format!("reading config {}", p.display()))?;
                    let cfg = UNetConfig::from_json(&json)
                        .with_context(|| format!("config {}", p.display()))?;
                    ConfigSource::Explicit(cfg)
                }
                (None, Some(name)) => ConfigSource::Explicit(UNetConfig::preset(name)?),
                (None, None) => ConfigSource::Metadata,
            };
            io::load(path, cfg, &device)?
        }
    };
    Ok(loaded)
}

fn input_shape(args: &ExportArgs, in_channels: usize) -> anyhow::Result<InputShape> {
    let fixed = match &args.shape {
        Some(s) => Some(parse_shape(s)?),
        None => None,
    };
    let axes = match (&args.dynamic, fixed) {
        (Some(axes), _) => axes.clone(),
        (None, Some(_)) => vec![DynamicAxis::None],
        (None, None) => vec![DynamicAxis::Batch, DynamicAxis::Hw],
    };
    let dyn_batch = axes.contains(&DynamicAxis::Batch);
    let dyn_hw = axes.contains(&DynamicAxis::Hw);
    if axes.contains(&DynamicAxis::None) && axes.len() > 1 {
        bail!("--dynamic none cannot be combined with other axes");
    }
    let need = |what: &str| format!("--dynamic without `{what}` needs --shape NxCxHxW for it");
    let batch = match (dyn_batch, fixed) {
        (true, _) => None,
        (false, Some(s)) => Some(s[0]),
        (false, None) => bail!(need("batch")),
    };
    let spatial = match (dyn_hw, fixed) {
        (true, _) => None,
        (false, Some(s)) => Some((s[2], s[3])),
        (false, None) => bail!(need("hw")),
    };
    if let Some(s) = fixed {
        if s[1] != in_channels {
            bail!(
                "--shape {}: the model has {in_channels} input channels, not {}",
                args.shape.as_deref().unwrap_or_default(),
                s[1]
            );
        }
    }
    Ok(InputShape { batch, spatial })
}

fn parse_shape(s: &str) -> anyhow::Result<[usize; 4]> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--shape {s}: expected NxCxHxW, e.g. 1x3x256x256"))?;
    match <[usize; 4]>::try_from(dims) {
        Ok(d) if d.iter().all(|&v| v > 0) => Ok(d),
        _ => bail!("--shape {s}: expected four positive sizes NxCxHxW, e.g. 1x3x256x256"),
    }
}

fn tolerance(atol: Option<f32>, rtol: Option<f32>, fp16: bool) -> Option<Tolerance> {
    if atol.is_none() && rtol.is_none() {
        return None;
    }
    let d = Tolerance::for_fp16(fp16);
    Some(Tolerance {
        atol: atol.unwrap_or(d.atol),
        rtol: rtol.unwrap_or(d.rtol),
    })
}

fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let Some(model_path) = args.model.clone() else {
        bail!("no model given (see --help)");
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| model_path.with_extension("onnx"));
    let loaded = load(&model_path, &args.source)?;
    let cfg = loaded.model.config().clone();
    let opts = ExportOptions {
        opset: args.opset,
        input: input_shape(&args, cfg.in_channels)?,
        fold_bn: args.fold_bn,
        fp16: args.fp16,
        head: args.head,
        normalize_in_graph: args.normalize_in_graph,
    };
    let started = std::time::Instant::now();
    let proto = lower::export(
        &loaded.model,
        &loaded.preprocessing,
        &loaded.metadata,
        &opts,
    )
    .with_context(|| format!("exporting {}", model_path.display()))?;
    let loaded = if args.check.no_check {
        // Nothing else needs the candle weights: free them before encoding.
        drop(loaded);
        None
    } else {
        Some(loaded)
    };
    let bytes = lower::encode(&proto);
    drop(proto);

    // Written beside the target and renamed only once the check passed.
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".unet-export-")
        .suffix(".onnx")
        .tempfile_in(&dir)
        .map_err(io::without_temp_path)
        .with_context(|| format!("cannot write {}", output.display()))?;
    tmp.write_all(&bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", output.display()))?;
    let size = bytes.len();
    drop(bytes);
    let elapsed = started.elapsed();

    if let Some(loaded) = &loaded {
        let check_opts = args.check.parity.options(args.fp16);
        let report = check::check_model(
            &loaded.model,
            &loaded.preprocessing,
            tmp.path(),
            &check_opts,
        )
        .with_context(|| format!("checking {}", output.display()))?;
        println!("{report}");
        write_json_report(&report, args.check.parity.report.as_deref())?;
        if !report.passed() {
            eprintln!(
                "error: {} does not match {} within tolerance; not written",
                output.display(),
                model_path.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    tmp.persist(&output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "wrote {} ({:.1} MB, opset {}, {} head) in {:.2} s",
        output.display(),
        size as f64 / 1e6,
        opts.opset,
        opts.head.as_str(),
        elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_json_report(report: &Report, path: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        let json = serde_json::to_string_pretty(&report.to_json())? + "\n";
        io::atomic_write(path, json.as_bytes()).context("writing the parity report")?;
    }
    Ok(())
}

fn print_report(report: &Report, json: Option<&Path>) -> anyhow::Result<ExitCode> {
    println!("{report}");
    write_json_report(report, json)?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    match (&args.golden, args.files.as_slice()) {
        (Some(dir), [onnx]) => {
            let report = golden::check_golden(dir, onnx, &args.parity.options(false))
                .with_context(|| {
                    format!("checking {} against {}", onnx.display(), dir.display())
                })?;
            print_report(&report, args.parity.report.as_deref())
        }
        (None, [model, onnx]) => {
            let loaded = load(model, &args.source)?;
            let info = check::read_onnx_info(onnx)?;
            let opts = args.parity.options(info.fp16);
            let report = check::check_model(&loaded.model, &loaded.preprocessing, onnx, &opts)
                .with_context(|| format!("checking {}", onnx.display()))?;
            print_report(&report, args.parity.report.as_deref())
        }
        (Some(_), _) => bail!("with --golden DIR give only the ONNX file"),
        (None, _) => bail!("give MODEL.safetensors and MODEL.onnx (or --golden DIR MODEL.onnx)"),
    }
}

fn run_golden(args: GoldenArgs) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model, &args.source)?;
    let path = golden::write_golden(
        &loaded.model,
        &loaded.preprocessing,
        &args.output,
        args.seed,
    )
    .with_context(|| format!("writing golden outputs to {}", args.output.display()))?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn run_import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let source = ModelArgs {
        from: args.from,
        config: None,
        preset: None,
    };
    let loaded = load(&args.checkpoint, &source)?;
    let output = args
        .output
        .unwrap_or_else(|| args.checkpoint.with_extension("unet.safetensors"));
    io::save(
        &loaded.model,
        &loaded.preprocessing,
        &loaded.metadata,
        &output,
    )
    .with_context(|| format!("writing {}", output.display()))?;
    println!(
        "wrote {} ({} parameters, config {})",
        output.display(),
        loaded.model.num_parameters(),
        loaded.model.config().to_json()
    );
    Ok(ExitCode::SUCCESS)
}

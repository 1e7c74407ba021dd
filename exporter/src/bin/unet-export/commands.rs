//! What each subcommand does, on the library's functions: load and validate
//! the model, export, check, write goldens, import, annotate.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use log::{debug, info};
use unet_exporter::check::{self, Report};
use unet_exporter::runner::Runner;
use unet_exporter::{annotate, golden, import, lower, nnef, validate, ExportOptions, InputShape};
use unet_models::candle_core::Device;
use unet_models::io::{self, ConfigSource, LoadedModel};
use unet_models::{milesial, UNetConfig};

use crate::args::{
    AnnotateArgs, CheckArgs, Cli, Command, DynamicAxis, ExportArgs, GoldenArgs, ImportArgs,
    ModelArgs, NnefArgs, Source,
};

/// The parity check failed (or drifted from golden outputs).
const EXIT_DRIFT: u8 = 2;

/// Prints progress and results unless `--quiet`.
#[derive(Clone, Copy)]
struct Out {
    quiet: bool,
}

impl Out {
    fn say(self, text: impl std::fmt::Display) {
        if !self.quiet {
            println!("{text}");
        }
    }

    /// The report table: always when it failed, otherwise unless quiet.
    fn report(self, report: &Report) {
        if !self.quiet || !report.passed() {
            println!("{report}");
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Out { quiet: cli.quiet };
    match cli.command {
        Some(Command::Check(args)) => run_check(args, out),
        Some(Command::Golden(args)) => run_golden(args, out),
        Some(Command::Import(args)) => run_import(args, out),
        Some(Command::Annotate(args)) => run_annotate(args, out),
        Some(Command::Nnef(args)) => run_nnef(args, out),
        None => run_export(cli.export, out),
    }
}

fn config_source(config: Option<&Path>, preset: Option<&str>) -> anyhow::Result<ConfigSource> {
    Ok(match (config, preset) {
        (Some(p), _) => {
            let json = std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?;
            let cfg =
                UNetConfig::from_json(&json).with_context(|| format!("config {}", p.display()))?;
            ConfigSource::Explicit(cfg)
        }
        (None, Some(name)) => ConfigSource::Explicit(UNetConfig::preset(name)?),
        (None, None) => ConfigSource::Metadata,
    })
}

/// Loads weights (safetensors, or a PyTorch .pth read with candle's pickle
/// reader) and refuses what would export to a broken file.
fn load(path: &Path, source: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let device = Device::Cpu;
    let cfg = config_source(source.config.as_deref(), source.preset.as_deref())?;
    let loaded = if import::is_pth(path) {
        debug!("{}: a PyTorch checkpoint", path.display());
        let ckpt = import::read_pth(path)?;
        info!(
            "{}: {} tensors ({})",
            path.display(),
            ckpt.tensors.len(),
            ckpt.layout
        );
        let bytes = ckpt.safetensors_bytes()?;
        let mut loaded = match source.from {
            Source::Milesial => milesial::load_bytes(path, &bytes, &device)?,
            Source::Unet => io::load_bytes(path, &bytes, cfg, &device)?,
        };
        loaded.metadata.extend(ckpt.metadata);
        loaded
    } else {
        match source.from {
            Source::Milesial => milesial::load(path, &device)?,
            Source::Unet => io::load(path, cfg, &device)?,
        }
    };
    validate::check_weights(&loaded.model).with_context(|| path.display().to_string())?;
    validate::check_preprocessing(&loaded.preprocessing, loaded.model.config().in_channels)
        .with_context(|| path.display().to_string())?;
    Ok(loaded)
}

/// Refuses an output that is the input file itself, however it is spelled
/// (`./w.safetensors`, a symlink, a hard link): writing would replace it.
fn refuse_overwriting(input: &Path, output: &Path) -> anyhow::Result<()> {
    if same_file(input, output) {
        bail!(
            "{}: the output would replace the input {}; give another -o",
            output.display(),
            input.display()
        );
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        if x == y {
            return true;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
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

fn run_export(args: ExportArgs, out: Out) -> anyhow::Result<ExitCode> {
    let Some(model_path) = args.model.clone() else {
        bail!("no model given (see --help)");
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| model_path.with_extension("onnx"));
    refuse_overwriting(&model_path, &output)?;
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
    debug!("encoded {} bytes", bytes.len());

    // Written beside the target and renamed only once the check passed.
    let mut tmp = temp_beside(&output, ".onnx")?;
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
        let json = args.check.parity.report.as_deref();
        let reference = model_path.display().to_string();
        if !gate_passed(&report, json, &output, &reference, out)? {
            return Ok(ExitCode::from(EXIT_DRIFT));
        }
    }
    tmp.persist(&output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    out.say(format_args!(
        "wrote {} ({:.1} MB, opset {}, {} head) in {:.2} s",
        output.display(),
        size as f64 / 1e6,
        opts.opset,
        opts.head.as_str(),
        elapsed.as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Prints a written file's parity report (and its JSON); false, with the
/// reason on stderr, when the file failed it and is not to be written.
fn gate_passed(
    report: &Report,
    json: Option<&Path>,
    output: &Path,
    reference: &str,
    out: Out,
) -> anyhow::Result<bool> {
    out.report(report);
    write_json_report(report, json)?;
    if !report.passed() {
        eprintln!(
            "error: {} does not match {reference} within tolerance; not written",
            output.display()
        );
    }
    Ok(report.passed())
}

fn write_json_report(report: &Report, path: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        let json = serde_json::to_string_pretty(&report.to_json())? + "\n";
        io::atomic_write(path, json.as_bytes()).context("writing the parity report")?;
    }
    Ok(())
}

fn finish_check(report: &Report, json: Option<&Path>, out: Out) -> anyhow::Result<ExitCode> {
    out.report(report);
    write_json_report(report, json)?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRIFT)
    })
}

fn run_check(args: CheckArgs, out: Out) -> anyhow::Result<ExitCode> {
    let json = args.parity.report.as_deref();
    match (&args.golden, args.files.as_slice()) {
        (Some(dir), [onnx]) => {
            let report = golden::check_golden(dir, onnx, &args.parity.options(false))
                .with_context(|| {
                    format!("checking {} against {}", onnx.display(), dir.display())
                })?;
            finish_check(&report, json, out)
        }
        (None, [onnx]) => {
            let info = check::read_onnx_info(onnx)?;
            let report = check::check_foreign(onnx, &args.parity.options(info.fp16))
                .with_context(|| format!("checking {}", onnx.display()))?;
            finish_check(&report, json, out)
        }
        (None, [model, onnx]) => {
            let loaded = load(model, &args.source)?;
            let info = check::read_onnx_info(onnx)?;
            let opts = args.parity.options(info.fp16);
            let report = check::check_model(&loaded.model, &loaded.preprocessing, onnx, &opts)
                .with_context(|| format!("checking {}", onnx.display()))?;
            finish_check(&report, json, out)
        }
        (Some(_), _) => bail!("with --golden DIR give only the ONNX file"),
        (None, _) => bail!("give MODEL.safetensors and MODEL.onnx (or --golden DIR MODEL.onnx)"),
    }
}

fn run_golden(args: GoldenArgs, out: Out) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.model, &args.source)?;
    let written = golden::write(
        &loaded.model,
        &loaded.preprocessing,
        &args.output,
        &golden::GoldenOptions {
            seed: args.seed,
            format: args.format,
            head: args.head,
        },
    )
    .with_context(|| format!("writing golden outputs to {}", args.output.display()))?;
    for path in written {
        out.say(format_args!("wrote {}", path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_import(args: ImportArgs, out: Out) -> anyhow::Result<ExitCode> {
    let source = ModelArgs {
        from: args.from,
        config: args.config.clone(),
        preset: args.preset.clone(),
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.checkpoint.with_extension("unet.safetensors"));
    refuse_overwriting(&args.checkpoint, &output)?;
    let loaded = load(&args.checkpoint, &source)?;
    io::save(
        &loaded.model,
        &loaded.preprocessing,
        &loaded.metadata,
        &output,
    )
    .with_context(|| format!("writing {}", output.display()))?;
    out.say(format_args!(
        "wrote {} ({} parameters, config {})",
        output.display(),
        loaded.model.num_parameters(),
        loaded.model.config().to_json()
    ));
    Ok(ExitCode::SUCCESS)
}

fn run_annotate(args: AnnotateArgs, out: Out) -> anyhow::Result<ExitCode> {
    refuse_overwriting(&args.model, &args.output)?;
    let annotation = annotate::Annotation {
        mean: args.mean,
        std: args.std,
        channel_order: match args.channel_order {
            crate::args::ChannelOrder::Rgb => unet_spec::ChannelOrder::Rgb,
            crate::args::ChannelOrder::Bgr => unet_spec::ChannelOrder::Bgr,
            crate::args::ChannelOrder::Gray => unet_spec::ChannelOrder::Gray,
        },
        threshold: args.threshold,
        class_names: args.class_names,
        head: args.head,
        size_multiple: args.multiple,
    };
    let proto = annotate::annotate(&args.model, &annotation)?;
    io::atomic_write(&args.output, &lower::encode(&proto))
        .with_context(|| format!("writing {}", args.output.display()))?;
    out.say(format_args!(
        "wrote {} ({} head, metadata of unet-export {})",
        args.output.display(),
        annotation.head.as_str(),
        env!("CARGO_PKG_VERSION")
    ));
    Ok(ExitCode::SUCCESS)
}

fn run_nnef(args: NnefArgs, out: Out) -> anyhow::Result<ExitCode> {
    let output = args.output.clone().unwrap_or_else(|| {
        let stem = args.onnx.file_stem().unwrap_or_default().to_string_lossy();
        args.onnx.with_file_name(format!("{stem}.nnef.tar"))
    });
    refuse_overwriting(&args.onnx, &output)?;
    if let Some(weights) = &args.weights {
        refuse_overwriting(weights, &output)?;
    }
    let started = std::time::Instant::now();
    let info = check::read_onnx_info(&args.onnx)?;
    let model = nnef::from_onnx(&args.onnx, args.size)?;
    let mut tmp = temp_beside(&output, ".nnef.tar")?;
    nnef::write(&model, tmp.as_file_mut(), &output)?;
    drop(model);
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", output.display()))?;
    // tract re-derives every shape when it reads the archive; where its
    // symbols cannot express them, say so before any parity figure.
    if let Err(e) = Runner::Tract.open(tmp.path()) {
        let hint = match args.size {
            None => "; a fixed input size (--size WxH) avoids symbolic sizes",
            Some(_) => "",
        };
        bail!(
            "{}: tract cannot read back the archive written from {}: {e}{hint}",
            output.display(),
            args.onnx.display()
        );
    }
    let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    let elapsed = started.elapsed();

    // The same gate as the export's: every case within tolerance on tract.
    let mut opts = args.parity.options(info.fp16);
    opts.runners.retain(|&r| r == Runner::Tract);
    let report = match (&args.weights, &args.golden) {
        (Some(weights), _) => {
            let loaded = load(weights, &args.source)?;
            check::check_model(&loaded.model, &loaded.preprocessing, tmp.path(), &opts)
        }
        (None, Some(dir)) => golden::check_golden(dir, tmp.path(), &opts),
        (None, None) => check::check_against(&args.onnx, Runner::Tract, tmp.path(), &opts),
    }
    .with_context(|| format!("checking {}", output.display()))?;
    let json = args.parity.report.as_deref();
    if !gate_passed(&report, json, &output, "its reference", out)? {
        return Ok(ExitCode::from(EXIT_DRIFT));
    }
    tmp.persist(&output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    out.say(format_args!(
        "wrote {} ({:.1} MB, NNEF for tract) in {:.2} s",
        output.display(),
        size as f64 / 1e6,
        elapsed.as_secs_f64()
    ));
    Ok(ExitCode::SUCCESS)
}

/// A temporary file in `output`'s folder, renamed onto it once checked.
fn temp_beside(output: &Path, suffix: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    io::temp_file_beside(output, ".unet-export-", suffix)
        .with_context(|| format!("cannot write {}", output.display()))
}

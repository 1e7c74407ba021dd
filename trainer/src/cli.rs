//! Command-line interface of `unet-train` (the binary is a thin wrapper).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use unet_models::candle_core::{DType, Device, Tensor};
use unet_models::{UNet, UNetConfig};

use crate::amp::Precision;
use crate::augment::AugmentConfig;
use crate::data::{self, DataSpec, FileSource, Source};
use crate::loss::{LossKind, LossParams};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::options::defaults;
use crate::schedule::{ScheduleConfig, SchedulerKind};
use crate::synth;
use crate::train::step::Learner;
use crate::train::{self, Normalization, TrainOptions};

const EXAMPLES: &str = "\
Examples:
  # Train on the bundled synthetic endoscopy data (no download):
  unet-train --demo
  # Kvasir-SEG (images/ + masks/) or Carvana (train/ + train_masks/), layout auto-detected:
  unet-train --data data/Kvasir-SEG --model unet-16 --epochs 40 --out runs/kvasir
  # Any folders with matching file stems, attention U-Net, SGD with the paper's momentum:
  unet-train --images imgs/ --masks labels/ --model attention-unet-16 --optimizer sgd --momentum 0.99 --lr 0.01
  # Three classes from class-index PNG masks:
  unet-train --data data/seg --classes 3 --loss ce-dice --class-names background,polyp,instrument
  # Train for five minutes (the schedule is fitted to the budget):
  unet-train --data data/Kvasir-SEG --time 5m --out runs/kvasir-5m
  # Continue an interrupted run:
  unet-train --demo --out runs/demo --resume runs/demo/checkpoint.safetensors
  # Write the synthetic data in Kvasir-SEG layout, then train from disk:
  unet-train demo-data --out data/synthetic && unet-train --data data/synthetic";

/// Train U-Net / Attention U-Net segmentation models with candle.
///
/// Writes into --out: best.safetensors (best validation Dice, self-describing,
/// ready for `unet-export`), last.safetensors, checkpoint.safetensors (for
/// --resume), metrics.jsonl, results.csv, curves.png and val_preview.png.
/// Log lines follow RUST_LOG (e.g. RUST_LOG=warn); --quiet keeps warnings only.
#[derive(Parser, Debug)]
#[command(name = "unet-train", bin_name = "unet-train", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the synthetic data set to disk in Kvasir-SEG layout (images/*.jpg, masks/*.png).
    DemoData {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Side of the square images in pixels.
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Time training steps (forward, loss, backward, AdamW) on random data.
    BenchStep {
        #[arg(long, default_value = "unet")]
        model: String,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// Timed steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormArg {
    /// Mean/std measured on the training images.
    Dataset,
    /// ImageNet mean/std.
    Imagenet,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Data set folder: Kvasir-SEG (images/ + masks/) or Carvana (train/ + train_masks/).
    #[arg(long, conflicts_with_all = ["images", "demo"])]
    pub data: Option<PathBuf>,
    /// Image folder (with --masks); files are matched to masks by stem.
    #[arg(long, requires = "masks", conflicts_with = "demo")]
    pub images: Option<PathBuf>,
    /// Mask folder (with --images); a `_mask` suffix on mask stems is allowed.
    #[arg(long, requires = "images")]
    pub masks: Option<PathBuf>,
    /// Train on bundled synthetic endoscopy-like frames (the default without --data/--images).
    #[arg(long)]
    pub demo: bool,
    /// Number of synthetic samples for --demo (--val-split of them held out for validation).
    #[arg(long, default_value_t = 240)]
    pub demo_count: usize,
    /// Skip unmatched or unreadable files with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,

    /// Preset name (unet, unet-16, attention-unet-16, ...) or a config JSON file.
    #[arg(long, default_value = "unet-16")]
    pub model: String,
    /// Output classes (1 = binary masks thresholded at 127; >1 = class-index masks).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Names of the classes (comma-separated), stored in the model file.
    #[arg(long, value_delimiter = ',')]
    pub class_names: Vec<String>,

    /// Epochs (default: 3 for --demo, 40 for a data set on disk).
    #[arg(long, conflicts_with = "time")]
    pub epochs: Option<usize>,
    /// Train for this long instead of a number of epochs (90s, 5m, 1h30m): the
    /// schedule (warm-up, cosine) is fitted to the budget from measured step
    /// times, the best model is kept, and training stops when it is spent.
    #[arg(long, value_parser = parse_duration)]
    pub time: Option<std::time::Duration>,
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = defaults::ACCUMULATE)]
    pub accumulate: usize,
    /// Peak learning rate (positive).
    #[arg(long, default_value_t = defaults::LR)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    pub optimizer: OptimizerKind,
    /// SGD momentum (0.99 as in the U-Net paper).
    #[arg(long, default_value_t = defaults::MOMENTUM)]
    pub momentum: f64,
    /// L2 penalty (adam, sgd) or decoupled weight decay (adamw).
    #[arg(long, default_value_t = defaults::WEIGHT_DECAY)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value_t = LossKind::BceDice)]
    pub loss: LossKind,
    /// Smoothing term of the Dice, Jaccard and Tversky losses.
    #[arg(long, default_value_t = LossParams::default().smooth)]
    pub smooth: f64,
    #[arg(long, value_enum, default_value_t = SchedulerKind::Cosine)]
    pub scheduler: SchedulerKind,
    /// Floor of the cosine schedules.
    #[arg(long, default_value_t = defaults::MIN_LR)]
    pub min_lr: f64,
    /// Linear learning-rate warm-up, in optimiser steps.
    #[arg(long, default_value_t = defaults::WARMUP_STEPS)]
    pub warmup_steps: u64,
    /// Step schedule: decay every this many epochs.
    #[arg(long, default_value_t = defaults::STEP_EPOCHS)]
    pub step_epochs: u64,
    /// Step schedule: decay factor.
    #[arg(long, default_value_t = defaults::GAMMA)]
    pub gamma: f64,
    /// Warm restarts: first cycle length in epochs.
    #[arg(long, default_value_t = defaults::RESTART_EPOCHS)]
    pub restart_epochs: f64,
    /// Warm restarts: cycle length multiplier.
    #[arg(long, default_value_t = defaults::RESTART_MULT)]
    pub restart_mult: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad: Option<f64>,

    /// Network input size, WxH or N (multiples of 2^depth; at most 4096x4096 pixels).
    #[arg(long, default_value_t = format!("{0}x{0}", defaults::IMAGE_SIZE))]
    pub image_size: String,
    /// Fraction of the samples held out for validation.
    #[arg(long, default_value_t = defaults::VAL_SPLIT)]
    pub val_split: f64,
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Input normalisation (the values used are stored in the model file).
    #[arg(long, value_enum, default_value_t = NormArg::Dataset)]
    pub normalize: NormArg,
    /// Foreground probability threshold for metrics and the saved model.
    #[arg(long, default_value_t = defaults::THRESHOLD)]
    pub threshold: f32,

    /// Disable augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Maximum rotation in degrees.
    #[arg(long, default_value_t = AugmentConfig::default().rotate_degrees)]
    pub rotate: f32,
    /// Elastic deformation: std of the 3x3-grid displacements in pixels (0 = off).
    #[arg(long, default_value_t = AugmentConfig::default().elastic_sigma)]
    pub elastic_sigma: f32,
    #[arg(long, default_value_t = AugmentConfig::default().elastic_prob)]
    pub elastic_prob: f32,
    #[arg(long, default_value_t = AugmentConfig::default().hflip)]
    pub hflip: f32,
    #[arg(long, default_value_t = AugmentConfig::default().vflip)]
    pub vflip: f32,
    #[arg(long, default_value_t = AugmentConfig::default().brightness)]
    pub brightness: f32,
    #[arg(long, default_value_t = AugmentConfig::default().contrast)]
    pub contrast: f32,

    /// cpu, cuda or cuda:N (cuda needs the `cuda` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Forward/backward precision: bf16 and f16 are mixed precision (f32 master
    /// weights, optimiser and BatchNorm; f16 adds dynamic loss scaling). Meant for
    /// CUDA; on the CPU the casts around the f32 kernels make them slower than f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Compute threads (default: all cores, at most 4 per core); same seed +
    /// same threads = same run.
    #[arg(long, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Data-loading worker threads (0 = load on the training thread).
    #[arg(long, default_value_t = defaults::WORKERS)]
    pub workers: usize,
    /// Batches each worker prepares ahead.
    #[arg(long, default_value_t = defaults::PREFETCH)]
    pub prefetch: usize,

    #[arg(long, default_value = "runs/unet")]
    pub out: PathBuf,
    /// Continue from a checkpoint.safetensors.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also checkpoint every N optimiser steps (always at each epoch end).
    #[arg(long)]
    pub save_every_steps: Option<u64>,
    /// Stop after N optimiser steps of this call (checkpointed); with --resume,
    /// N more steps from the checkpoint's.
    #[arg(long)]
    pub stop_after_steps: Option<u64>,
    /// No progress bars or per-epoch lines (warnings and errors only).
    #[arg(long)]
    pub quiet: bool,
}

/// Log lines to stderr: info and up (warnings up with `quiet`), or as
/// `RUST_LOG` says; info lines are bare messages, others carry their level.
pub fn init_logging(quiet: bool) {
    use std::io::Write;
    let level = if quiet {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    };
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format(|buf, record| match record.level() {
            log::Level::Info => writeln!(buf, "{}", record.args()),
            other => writeln!(
                buf,
                "{}: {}",
                other.as_str().to_ascii_lowercase(),
                record.args()
            ),
        })
        .try_init();
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("bad --device `{s}`: expected cpu, cuda or cuda:N"))?,
        None => bail!("bad --device `{s}`: expected cpu, cuda or cuda:N"),
    };
    if cfg!(feature = "cuda") {
        Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
    } else {
        bail!("--device {s}: this unet-train was built without CUDA; rebuild with `cargo build --release -p unet-trainer --features cuda`")
    }
}

/// `90s`, `5m`, `1h30m`, `2h 15m` (humantime's syntax).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 90s, 5m, 1h30m)"))
}

/// More threads than 4 per core only adds contention; 100 000 hangs the machine.
fn parse_threads(s: &str) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match s.parse::<usize>() {
        Ok(n) if (1..=4 * cores).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}`: threads must be between 1 and {} (4 x the {cores} cores here)",
            4 * cores
        )),
    }
}

/// `--image-size`: the spelling every tool shares (`unet_spec::size`).
fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    unet_spec::size::parse_wxh(s).with_context(|| format!("bad --image-size `{s}`"))
}

fn model_config(spec: &str, classes: Option<usize>) -> anyhow::Result<UNetConfig> {
    let mut cfg = if Path::new(spec).is_file() {
        let text = std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"))?;
        UNetConfig::from_json(&text).with_context(|| format!("{spec}: bad model config"))?
    } else {
        UNetConfig::preset(spec)?
    };
    if let Some(c) = classes {
        cfg.out_channels = c;
        cfg.validate()?;
    }
    Ok(cfg)
}

/// Builds the run options from the command line.
pub fn options(a: &TrainArgs) -> anyhow::Result<TrainOptions> {
    let model = model_config(&a.model, a.classes)?;
    let (width, height) = parse_size(&a.image_size)?;
    let augment = (!a.no_augment).then_some(AugmentConfig {
        hflip: a.hflip,
        vflip: a.vflip,
        rotate_degrees: a.rotate,
        elastic_sigma: a.elastic_sigma,
        elastic_prob: a.elastic_prob,
        brightness: a.brightness,
        contrast: a.contrast,
    });
    Ok(TrainOptions {
        model,
        epochs: a
            .epochs
            .unwrap_or(if a.data.is_some() || a.images.is_some() {
                defaults::EPOCHS
            } else {
                defaults::DEMO_EPOCHS
            }),
        batch_size: a.batch_size,
        accumulate: a.accumulate,
        precision: a.precision,
        lr: a.lr,
        optimizer: OptimizerConfig {
            kind: a.optimizer,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
            momentum: a.momentum,
        },
        loss: a.loss,
        loss_params: LossParams {
            smooth: a.smooth,
            ..LossParams::default()
        },
        schedule: ScheduleConfig {
            kind: a.scheduler,
            min_lr: a.min_lr,
            warmup_steps: a.warmup_steps,
            step_epochs: a.step_epochs,
            gamma: a.gamma,
            restart_epochs: a.restart_epochs,
            restart_mult: a.restart_mult,
        },
        clip_grad_norm: a.clip_grad,
        width,
        height,
        val_split: a.val_split,
        seed: a.seed,
        workers: a.workers,
        prefetch: a.prefetch,
        augment,
        normalization: match a.normalize {
            NormArg::Dataset => Normalization::Dataset,
            NormArg::Imagenet => Normalization::Imagenet,
        },
        threshold: a.threshold,
        class_names: a.class_names.clone(),
        save_every_steps: a.save_every_steps,
        stop_after_steps: a.stop_after_steps,
        time_budget: a.time,
        preview_count: defaults::PREVIEW_COUNT,
    })
}

fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let opts = options(a)?;
    // Before any data is read or generated at the requested size.
    opts.validate()?;
    let source: Arc<dyn Source> = if let Some(dir) = &a.data {
        let spec = DataSpec::detect(dir)?;
        file_source(spec, a, &opts)?
    } else if let (Some(images), Some(masks)) = (&a.images, &a.masks) {
        file_source(DataSpec::generic(images, masks), a, &opts)?
    } else {
        if opts.model.out_channels != 1 {
            bail!("--demo data is binary: drop --classes or use --data");
        }
        let side = opts.width.max(opts.height);
        log::info!(
            "data: {} synthetic endoscopy frames ({side}x{side}, seed {}), generated in memory",
            a.demo_count,
            a.seed
        );
        Arc::new(synth::demo_source(a.demo_count, side, a.seed))
    };
    let started = Instant::now();
    let summary = train::run(&opts, source, &a.out, &device, a.resume.as_deref(), a.quiet)?;
    let last = summary.history.last();
    if summary.interrupted {
        println!(
            "stopped as asked after {} step(s); continue with --resume {}",
            opts.stop_after_steps.unwrap_or_default(),
            a.out.join(train::CHECKPOINT_FILE).display()
        );
    }
    if summary.out_of_time {
        println!(
            "time budget of {} spent",
            humantime::format_duration(opts.time_budget.unwrap_or_default())
        );
    }
    println!(
        "final validation dice {:.4} (best {:.4}) after {} epoch(s) in {:.1}s; model: {}",
        last.map_or(f64::NAN, |r| r.val.dice),
        summary.best_dice,
        summary.history.len(),
        started.elapsed().as_secs_f64(),
        a.out.join(train::BEST_FILE).display()
    );
    Ok(())
}

fn file_source(
    spec: DataSpec,
    a: &TrainArgs,
    opts: &TrainOptions,
) -> anyhow::Result<Arc<dyn Source>> {
    log::info!(
        "data: {} layout: images {}, masks {}",
        spec.kind,
        spec.images.display(),
        spec.masks.display()
    );
    let report = data::scan(
        &spec,
        opts.model.in_channels,
        opts.model.out_channels,
        a.skip_bad,
    )?;
    for p in &report.skipped {
        log::warn!("skipping {p}");
    }
    log::info!("data: {} image/mask pairs", report.pairs.len());
    Ok(Arc::new(FileSource {
        pairs: report.pairs,
        in_channels: opts.model.in_channels,
        classes: opts.model.out_channels,
    }))
}

/// Training steps timed on random data: [`Learner::step`] (forward in
/// training mode, BCE-with-logits loss, backward, AdamW; with f16 also the
/// loss scaling and the overflow check), as the training loop runs it.
pub fn bench_step(
    model: &str,
    size: usize,
    batch: usize,
    steps: usize,
    device: &str,
    precision: Precision,
) -> anyhow::Result<()> {
    let device = parse_device(device)?;
    let cfg = model_config(model, None)?;
    let mut net = UNet::new(&cfg, &device, 0)?;
    net.set_compute_dtype(precision.dtype())?;
    let mut scaler = precision.loss_scaler();
    let x = Tensor::randn(0f32, 1.0, (batch, cfg.in_channels, size, size), &device)?;
    let t = Tensor::rand(0f32, 1.0, (batch, cfg.out_channels, size, size), &device)?
        .ge(0.5)?
        .to_dtype(DType::F32)?;
    let opt = Optimizer::new(
        OptimizerConfig {
            kind: OptimizerKind::Adamw,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            momentum: 0.0,
        },
        net.trainable_vars(),
    );
    let mut learner = Learner::new(net, opt, LossKind::Bce, LossParams::default(), 1, None);
    let threads = unet_models::candle_core::utils::get_num_threads();
    println!(
        "bench-step: {model} {size}x{size} batch {batch}, {threads} thread(s), {:?}, {precision:?}",
        device.location()
    );
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t0 = Instant::now();
        let r = learner.step(&x, &t, Some(1e-3), scaler.as_mut())?;
        device.synchronize()?;
        let total = t0.elapsed().as_secs_f64();
        println!(
            "  step {i}: {:.1} ms (forward {:.1}, loss+backward {:.1}, adamw {:.1}){}",
            total * 1e3,
            r.forward.as_secs_f64() * 1e3,
            r.backward.as_secs_f64() * 1e3,
            (total - (r.forward + r.backward).as_secs_f64()) * 1e3,
            if i < 2 { " warm-up" } else { "" }
        );
        if i >= 2 {
            times.push(total);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "median step: {:.1} ms ({:.1} images/s)",
        median * 1e3,
        batch as f64 / median
    );
    Ok(())
}

/// candle runs its large elementwise ops (the gradient sums of its backward
/// pass among them) on a pool of its own, `CANDLE_NUM_THREADS` workers (by
/// default as many as rayon's), which spin for some 25 000 pauses after each
/// op before they sleep. The convolution, BatchNorm and pooling kernels run
/// on rayon's pool, on the same cores, right after such an op: the spinning
/// worker took a core from them. With one candle thread (the caller; no
/// pool) the CPU step of `unet-16` and `attention-unet-16` at 128², batch 8,
/// 2 threads, took 280–358 ms instead of 343–401 (`unet-train bench-step`,
/// alternating runs); the base-64 `unet`'s did not change. Left alone when
/// the user set it; CUDA runs are unaffected.
fn keep_candle_ops_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before candle's pool is first used, and before other threads start.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs the command line; `main` only prints the error.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.train.threads;
    if let Some(n) = threads {
        // candle and rayon size their pools from this before first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    keep_candle_ops_on_caller();
    match &cli.command {
        Some(Command::DemoData {
            out,
            count,
            size,
            seed,
        }) => {
            if !(1..=4096).contains(size) {
                bail!("--size {size}: the synthetic images' side must be 1 to 4096 pixels");
            }
            synth::write_synthetic(out, *count, *size, *seed)
                .with_context(|| format!("writing synthetic data to {}", out.display()))?;
            println!(
                "wrote {count} synthetic samples ({size}x{size}) to {} in Kvasir-SEG layout (images/, masks/)",
                out.display()
            );
            Ok(())
        }
        Some(Command::BenchStep {
            model,
            size,
            batch_size,
            steps,
            device,
            precision,
        }) => bench_step(
            model,
            *size,
            *batch_size,
            (*steps).max(1),
            device,
            *precision,
        ),
        None => train(&cli.train),
    }
}

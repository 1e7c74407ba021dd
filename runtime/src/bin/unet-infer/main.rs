//! `unet-infer`: segment images with an exported U-Net, check a model against
//! ground truth, print its contract, or benchmark back ends.
//!
//! ```text
//! unet-infer model.onnx a.png frames/ -o masks --overlay
//! unet-infer eval model.onnx --images test/images --masks test/masks -o eval.csv
//! unet-infer info model.onnx
//! unet-infer bench model.onnx --size 256x256 --runs 50
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use unet_runtime::{
    Backend, Ep, Fit, MemoryPolicy, Segmenter, SegmenterOptions, SessionOptions, Tiling,
    DEFAULT_MAX_PIXELS,
};

mod bench;
mod eval;
mod info;
mod output;
mod segment;

#[derive(Parser, Debug)]
#[command(
    name = "unet-infer",
    version,
    about = "Segment images with an exported U-Net (ONNX) on tract or ONNX Runtime",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    segment: segment::SegmentArgs,
    /// Only print errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Return freed memory to the system after every tensor: lower peak RSS,
    /// slower frames (by default it is kept for the next frame).
    #[arg(long, global = true)]
    low_memory: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Dice, IoU, precision and recall against ground-truth masks, per image
    /// (CSV) and overall, on the back end given.
    Eval(eval::EvalArgs),
    /// The model's contract: training geometry, preprocessing, head, provenance.
    Info(info::InfoArgs),
    /// Latency of the bare graph and of the whole pipeline, per back end.
    Bench(bench::BenchArgs),
}

/// How frames meet the model, shared by segmenting and evaluating.
#[derive(Args, Debug, Clone)]
pub struct FitArgs {
    /// Run at native resolution, mirror-padded, instead of the training
    /// geometry the model records.
    #[arg(long, conflicts_with = "resize")]
    native: bool,
    /// Resize every frame to WxH for the network (for files that do not
    /// record their training size).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    resize: Option<(usize, usize)>,
    /// Overlap-tile inference at native resolution with tiles of N pixels.
    #[arg(long, value_name = "N", conflicts_with = "resize")]
    tile: Option<usize>,
    /// Overlap between tiles in pixels.
    #[arg(long, value_name = "N", default_value_t = 32, requires = "tile")]
    overlap: usize,
    /// Foreground threshold (binary models); default from the model.
    #[arg(long)]
    threshold: Option<f32>,
    /// Refuse frames with more pixels than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Inference engine: tract, ort (ONNX Runtime CPU), ort-cuda, ort-tensorrt,
    /// or auto (ort when ORT_DYLIB_PATH names a library, else tract).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Intra-op threads (at most 4 per core).
    #[arg(long, default_value_t = 2, value_parser = parse_threads)]
    threads: usize,
    /// GPU for ort-cuda / ort-tensorrt.
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    fp16: bool,
    /// TensorRT: engine and timing cache directory.
    #[arg(long, value_name = "DIR")]
    trt_cache: Option<PathBuf>,
    /// Fail, with the reason, when the requested provider (CUDA, TensorRT)
    /// is unavailable, instead of falling back to the CPU.
    #[arg(long)]
    strict_backend: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Tract,
    Ort,
    OrtCuda,
    OrtTensorrt,
    Auto,
}

impl BackendChoice {
    pub fn backend(self, device: i32, fp16: bool, cache: Option<PathBuf>) -> Backend {
        match self {
            BackendChoice::Tract => Backend::Tract,
            BackendChoice::Ort => Backend::Ort(Ep::Cpu),
            BackendChoice::OrtCuda => Backend::Ort(Ep::Cuda { device }),
            BackendChoice::OrtTensorrt => Backend::Ort(Ep::TensorRt {
                fp16,
                cache_dir: cache,
            }),
            BackendChoice::Auto => Backend::Auto,
        }
    }
}

pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    unet_runtime::spec::size::parse_wxh(s).map_err(|e| e.to_string())
}

/// More threads than 4 per core only adds contention; 100 000 hangs the machine.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = 4 * cores;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}`: threads must be between 1 and {max} (4 x the {cores} cores here)"
        )),
    }
}

/// Loads the model with the fit, tiling and back end the flags ask for.
pub fn load_segmenter(
    model: &std::path::Path,
    fit: &FitArgs,
    b: &BackendArgs,
) -> Result<Segmenter> {
    let options = SegmenterOptions {
        session: SessionOptions {
            threads: b.threads,
            strict_backend: b.strict_backend,
            ..SessionOptions::default()
        },
        fit: match (fit.native, fit.resize) {
            (true, _) => Fit::Pad,
            (false, Some((width, height))) => Fit::Resize { width, height },
            (false, None) => Fit::Model,
        },
        tiling: fit.tile.map(|tile| Tiling {
            tile,
            overlap: fit.overlap,
        }),
        threshold: fit.threshold,
        max_pixels: fit.max_pixels,
        ..SegmenterOptions::default()
    };
    let backend = b.backend.backend(b.device, b.fp16, b.trt_cache.clone());
    Segmenter::from_file_with(model, backend, options)
        .with_context(|| format!("loading {}", model.display()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 1 (2 means drift).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    unet_runtime::set_memory_policy(if cli.low_memory {
        MemoryPolicy::Return
    } else {
        MemoryPolicy::Keep
    });
    let default_level = if cli.quiet { "error" } else { "info" };
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(format!("unet_runtime={default_level}")),
    )
    .format_timestamp(None)
    .format_target(false)
    .init();
    let result = match &cli.command {
        Some(Command::Eval(args)) => eval::run(args, cli.quiet),
        Some(Command::Info(args)) => info::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        None => segment::run(&cli.segment, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

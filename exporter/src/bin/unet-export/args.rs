//! The command line of `unet-export` (clap derive): what each subcommand and
//! flag means, and nothing of how it runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use unet_exporter::check::{CheckOptions, Tolerance};
use unet_exporter::golden::GoldenFormat;
use unet_exporter::Head;

/// Exports a U-Net to ONNX and checks that the file computes what the model computes.
///
/// Examples:
///   unet-export model.safetensors                      # model.onnx, opset 17, dynamic N/H/W, checked
///   unet-export model.safetensors --fold-bn --head sigmoid -o edge.onnx
///   unet-export model.safetensors --shape 1x3x256x256 --fp16
///   unet-export --from milesial checkpoint.pth         # a PyTorch checkpoint, exported directly
///   unet-export import checkpoint.pth -o model.safetensors
///   unet-export check model.safetensors model.onnx
///   unet-export check foreign.onnx                     # tract vs ONNX Runtime, no weights
///   unet-export annotate foreign.onnx --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 -o annotated.onnx
///   unet-export golden model.safetensors -o golden/ && unet-export check --golden golden/ model.onnx
///   unet-export nnef model.onnx --weights model.safetensors   # model.nnef.tar for the ONNX-free runtime
///
/// Exit status: 0 success, 1 usage or input error, 2 the parity check failed
/// (no ONNX file is left behind). RUST_LOG=debug logs what each step does.
#[derive(Parser)]
#[command(
    name = "unet-export",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub export: ExportArgs,
    /// Print nothing on success (errors and a failed check are still reported).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Compare an ONNX file with the model's candle forward pass, with saved
    /// golden outputs, or (ONNX file alone) tract with ONNX Runtime.
    Check(CheckArgs),
    /// Write seeded inputs and the model's outputs for later checks and other tools.
    Golden(GoldenArgs),
    /// Convert a PyTorch checkpoint (.pth) or a safetensors `state_dict` into
    /// a self-describing safetensors model.
    Import(ImportArgs),
    /// Add this project's metadata (preprocessing, head, size multiple) to an
    /// ONNX file exported elsewhere, so `unet-infer` needs no flags for it.
    Annotate(AnnotateArgs),
    /// Re-encode an exported ONNX file as tract's NNEF archive (.nnef.tar),
    /// which the ONNX-free runtime build (feature `nnef`) loads; written only
    /// once it passes the parity gate on tract.
    Nnef(NnefArgs),
}

/// How to read the weights file.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weights layout of the input file (.safetensors or a PyTorch .pth).
    #[arg(long, value_enum, default_value_t = Source::Unet)]
    pub from: Source,
    /// Config JSON, for weight files without `unet.config` metadata.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Named preset, for weight files without `unet.config` metadata.
    #[arg(long)]
    pub preset: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// This project's names (PyTorch-style, config in the metadata or given).
    Unet,
    /// A milesial/Pytorch-UNet `state_dict`.
    Milesial,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The model weights (.safetensors, or a PyTorch .pth checkpoint).
    #[arg(required = true)]
    pub model: Option<PathBuf>,
    /// Output file [default: MODEL with the extension .onnx].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// ai.onnx opset, 13 to 21.
    #[arg(long, default_value_t = 17)]
    pub opset: i64,
    /// Symbolic input axes: `batch`, `hw`, both (default) or `none`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub dynamic: Option<Vec<DynamicAxis>>,
    /// Input shape NxCxHxW for the axes that are not dynamic, e.g. 1x3x256x256.
    #[arg(long)]
    pub shape: Option<String>,
    /// Fold BatchNorm into the preceding convolutions.
    #[arg(long)]
    pub fold_bn: bool,
    /// f16 weights and compute; input and output stay f32.
    #[arg(long)]
    pub fp16: bool,
    /// Output of the graph.
    #[arg(long, value_parser = parse_head, default_value = "logits")]
    pub head: Head,
    /// Put the mean/std normalisation into the graph (input: pixels in [0, 1]).
    #[arg(long)]
    pub normalize_in_graph: bool,
    #[command(flatten)]
    pub source: ModelArgs,
    #[command(flatten)]
    pub check: CheckFlags,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DynamicAxis {
    Batch,
    Hw,
    None,
}

#[derive(Args)]
pub struct CheckFlags {
    /// Skip the parity check.
    #[arg(long, conflicts_with = "report")]
    pub no_check: bool,
    #[command(flatten)]
    pub parity: ParityFlags,
}

/// How a parity check runs and reports: the export's own check and `check`.
#[derive(Args)]
pub struct ParityFlags {
    /// Absolute tolerance [default: 1e-4, 5e-2 for an fp16 graph].
    #[arg(long)]
    pub atol: Option<f32>,
    /// Relative tolerance [default: 1e-3, 5e-2 for an fp16 graph].
    #[arg(long)]
    pub rtol: Option<f32>,
    /// Seed of the check's random inputs and synthetic frames.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the parity report as JSON (written whether the check passes or not).
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

impl ParityFlags {
    pub fn options(&self, fp16: bool) -> CheckOptions {
        CheckOptions {
            tolerance: tolerance(self.atol, self.rtol, fp16),
            seed: self.seed,
            ..CheckOptions::default()
        }
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

#[derive(Args)]
pub struct CheckArgs {
    /// MODEL.safetensors MODEL.onnx; or only MODEL.onnx, with --golden DIR or
    /// alone (then tract is compared with ONNX Runtime).
    #[arg(required = true, num_args = 1..=2)]
    pub files: Vec<PathBuf>,
    /// Compare with the outputs saved by `unet-export golden` instead of running candle.
    #[arg(long)]
    pub golden: Option<PathBuf>,
    #[command(flatten)]
    pub source: ModelArgs,
    #[command(flatten)]
    pub parity: ParityFlags,
}

#[derive(Args)]
pub struct GoldenArgs {
    /// The model weights (.safetensors or .pth).
    pub model: PathBuf,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// `unet`: golden.safetensors for `check --golden`; `onnx-test`: ONNX
    /// test-data folders (onnx_test_runner); `npz`: NumPy; `polygraphy`:
    /// JSON for `polygraphy run --load-inputs/--load-outputs`.
    #[arg(long, value_enum, default_value_t = GoldenFormat::Unet)]
    pub format: GoldenFormat,
    /// The head of the ONNX file the outputs are meant for (not for `unet`,
    /// which stores logits and applies each file's own head).
    #[arg(long, value_parser = parse_head, default_value = "logits")]
    pub head: Head,
    #[command(flatten)]
    pub source: ModelArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct NnefArgs {
    /// The ONNX file, as `unet-export` wrote it (or annotated).
    pub onnx: PathBuf,
    /// Output file [default: ONNX with the extension .nnef.tar].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Fix the input at WxH (width x height) instead of any multiple of the
    /// model's size multiple: one camera resolution, or a graph with valid
    /// (unpadded) convolutions, whose sizes tract cannot keep symbolic.
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Gate on the model's candle forward pass (as the export's own check)
    /// instead of on the ONNX file run on tract.
    #[arg(long, value_name = "MODEL.safetensors", conflicts_with = "golden")]
    pub weights: Option<PathBuf>,
    /// Gate on the outputs saved by `unet-export golden`.
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
    #[command(flatten)]
    pub source: ModelArgs,
    #[command(flatten)]
    pub parity: ParityFlags,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    unet_spec::size::parse_wxh(s).map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct ImportArgs {
    /// The checkpoint: a PyTorch .pth (a `state_dict`, or a dict holding one
    /// under `state_dict` or `model`) or a `state_dict` saved with safetensors.
    pub checkpoint: PathBuf,
    /// Output file [default: CHECKPOINT with the extension .unet.safetensors].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Layout of the checkpoint's names.
    #[arg(long, value_enum, default_value_t = Source::Milesial)]
    pub from: Source,
    /// Config JSON (`--from unet` checkpoints carry none).
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Named preset (`--from unet` checkpoints carry no config).
    #[arg(long)]
    pub preset: Option<String>,
}

#[derive(Args)]
pub struct AnnotateArgs {
    /// The ONNX file to annotate (NCHW float input).
    pub model: PathBuf,
    /// Output file (never the input).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Per-channel mean subtracted from pixels scaled to [0, 1], e.g. 0.485,0.456,0.406.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, e.g. 0.229,0.224,0.225.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_negative_numbers = true
    )]
    pub std: Vec<f32>,
    /// What the graph's output already is: raw logits, sigmoid or softmax
    /// probabilities, or argmax labels.
    #[arg(long, value_parser = parse_head, default_value = "logits")]
    pub head: Head,
    /// Height and width must be multiples of this (e.g. 32 for a 5-level encoder).
    #[arg(long)]
    pub multiple: Option<usize>,
    /// Channel order the network expects.
    #[arg(long, value_enum, default_value_t = ChannelOrder::Rgb)]
    pub channel_order: ChannelOrder,
    /// Foreground probability threshold.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Class names, one per output channel.
    #[arg(long, value_delimiter = ',')]
    pub class_names: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
    Gray,
}

/// `--head`: logits, sigmoid, softmax or argmax (`unet_spec::Head`).
fn parse_head(s: &str) -> Result<Head, String> {
    s.parse().map_err(|e: unet_spec::SpecError| e.to_string())
}

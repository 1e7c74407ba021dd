//! `unet-infer`: segment images with an exported U-Net, or benchmark back ends.
//!
//! ```text
//! unet-infer model.onnx a.png b.jpg -o masks --overlay
//! unet-infer bench model.onnx --size 256x256 --runs 50
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use image::{DynamicImage, Rgb, RgbImage};
use unet_runtime::{
    Backend, Ep, Fit, MemoryPolicy, Segmentation, Segmenter, SegmenterOptions, Session,
    SessionOptions, Tensor4, Tiling,
};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Segment images with an exported U-Net (ONNX) on tract or ONNX Runtime",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    segment: SegmentArgs,
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
    /// Latency of the bare graph and of the whole pipeline, per back end.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct SegmentArgs {
    /// The ONNX model (pre-processing is read from its metadata).
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Images to segment (PNG, JPEG, BMP, TIFF, GIF).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Directory for `<name>_mask.png` (and `<name>_overlay.png`).
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    /// Foreground threshold (binary models); default from the model.
    #[arg(long)]
    threshold: Option<f32>,
    /// Also write the mask blended over the image.
    #[arg(long)]
    overlay: bool,
    /// Overlap-tile inference with tiles of N pixels for larger images.
    #[arg(long, value_name = "N")]
    tile: Option<usize>,
    /// Overlap between tiles in pixels.
    #[arg(long, value_name = "N", default_value_t = 32, requires = "tile")]
    overlap: usize,
    /// Resize every image to WxH for the network (e.g. the training size)
    /// instead of mirror-padding it.
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    resize: Option<(usize, usize)>,
}

#[derive(Args, Debug)]
struct BackendArgs {
    /// Inference engine: tract, ort (ONNX Runtime CPU), ort-cuda, ort-tensorrt,
    /// or auto (ort when ORT_DYLIB_PATH names a library, else tract).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
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
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Input size, WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_size, default_value = "256x256")]
    size: (usize, usize),
    /// Back ends to compare; default: tract and, when its library is found, ort.
    #[arg(long, value_enum, num_args = 1..)]
    backend: Vec<BackendChoice>,
    /// Timed runs per back end (after 3 warm-up runs).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// GPU for ort-cuda / ort-tensorrt.
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    fp16: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendChoice {
    Tract,
    Ort,
    OrtCuda,
    OrtTensorrt,
    Auto,
}

impl BackendChoice {
    fn backend(self, device: i32, fp16: bool, cache: Option<PathBuf>) -> Backend {
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

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 256x256"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("`{s}`: sides must be positive integers"))
    };
    Ok((parse(w)?, parse(h)?))
}

/// `log` records to stderr (the library names the provider that runs there).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("unet_runtime")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let cli = Cli::parse();
    unet_runtime::set_memory_policy(if cli.low_memory {
        MemoryPolicy::Return
    } else {
        MemoryPolicy::Keep
    });
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(if cli.quiet {
            log::LevelFilter::Error
        } else {
            log::LevelFilter::Info
        });
    }
    let result = match cli.command {
        Some(Command::Bench(args)) => bench(&args),
        None => segment(&cli.segment, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn segment(args: &SegmentArgs, quiet: bool) -> Result<()> {
    let model = args.model.as_deref().context("no model given")?;
    let b = &args.backend;
    let options = SegmenterOptions {
        session: SessionOptions {
            threads: b.threads,
            ..SessionOptions::default()
        },
        fit: args
            .resize
            .map_or(Fit::Pad, |(width, height)| Fit::Resize { width, height }),
        tiling: args.tile.map(|tile| Tiling {
            tile,
            overlap: args.overlap,
        }),
        threshold: args.threshold,
        geometry: None,
    };
    let backend = b.backend.backend(b.device, b.fp16, b.trt_cache.clone());
    let mut segmenter = Segmenter::from_file_with(model, backend, options)
        .with_context(|| format!("loading {}", model.display()))?;
    if !quiet {
        eprintln!("{}: {}", model.display(), segmenter.session().provider());
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    for path in &args.images {
        let image = image::open(path).with_context(|| format!("reading {}", path.display()))?;
        let seg = segmenter
            .segment(&image)
            .with_context(|| format!("segmenting {}", path.display()))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mask_path = args.output.join(format!("{stem}_mask.png"));
        write_png(&mask_path, &DynamicImage::ImageLuma8(seg.mask_image()))?;
        if args.overlay {
            let overlay_path = args.output.join(format!("{stem}_overlay.png"));
            write_png(
                &overlay_path,
                &DynamicImage::ImageRgb8(overlay(&image, &seg)),
            )?;
        }
        if !quiet {
            let fg = seg.mask.iter().filter(|&&m| m > 0).count();
            println!(
                "{} -> {} ({:.1} % foreground)",
                path.display(),
                mask_path.display(),
                100.0 * fg as f64 / seg.mask.len() as f64
            );
        }
    }
    Ok(())
}

/// The image with each class tinted (class 1 red, 2 green, ...), half opaque.
fn overlay(image: &DynamicImage, seg: &Segmentation) -> RgbImage {
    const PALETTE: [[u8; 3]; 6] = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
    ];
    let mut rgb = image.to_rgb8();
    for (i, px) in rgb.pixels_mut().enumerate() {
        let m = seg.mask[i] as usize;
        if m > 0 {
            let c = PALETTE[(m - 1) % PALETTE.len()];
            *px = Rgb(std::array::from_fn(|k| {
                ((px[k] as u16 + c[k] as u16) / 2) as u8
            }));
        }
    }
    rgb
}

/// Encodes to a temporary file beside `path`, then renames: never a half-written PNG.
fn write_png(path: &Path, image: &DynamicImage) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    image
        .write_to(
            &mut std::io::BufWriter::new(tmp.as_file_mut()),
            image::ImageFormat::Png,
        )
        .with_context(|| format!("encoding {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((p * (ms.len() - 1) as f64).round() as usize).min(ms.len() - 1)];
    Stats {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
    }
}

fn time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Stats> {
    for _ in 0..3 {
        f()?;
    }
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(ms))
}

fn bench(args: &BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (w, h) = args.size;
    let choices = if args.backend.is_empty() {
        let mut v = vec![BackendChoice::Tract];
        if cfg!(feature = "ort") && unet_runtime::ort_library().is_some() {
            v.push(BackendChoice::Ort);
        }
        v
    } else {
        args.backend.clone()
    };
    let options = SegmenterOptions {
        session: SessionOptions {
            threads: args.threads,
            ..SessionOptions::default()
        },
        ..SegmenterOptions::default()
    };
    // A deterministic textured frame.
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb([
            (x * 7 + y * 3) as u8,
            (x * y) as u8,
            255u32.wrapping_sub(x + y) as u8,
        ])
    }));
    println!(
        "{} at {w}x{h}, {} threads, {} runs (ms)",
        args.model.display(),
        args.threads,
        args.runs
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8}  {:>13} {:>9}",
        "provider", "p50", "p90", "p99", "FPS", "pipeline p50", "overhead"
    );
    let mut p50s = Vec::new();
    for choice in choices {
        let backend = choice.backend(args.device, args.fp16, None);
        let session = Session::from_file_with(&args.model, backend, &options.session)
            .with_context(|| format!("loading {} on {choice:?}", args.model.display()))?;
        let mut segmenter = Segmenter::from_session(session, options.clone())?;
        let c = segmenter.info().in_channels;
        let g = segmenter.info().geometry;
        let (ih, _, _) = g
            .input_for_output(h)
            .context("no input size covers the height")?;
        let (iw, _, _) = g
            .input_for_output(w)
            .context("no input size covers the width")?;
        let input = Tensor4::new(
            (0..c * ih * iw)
                .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
                .collect(),
            [1, c, ih, iw],
        )?;
        let raw = time(args.runs, || {
            segmenter.session_mut().run(&input)?;
            Ok(())
        })?;
        let full = time(args.runs, || {
            segmenter.segment(&image)?;
            Ok(())
        })?;
        let provider = segmenter.session().provider().to_string();
        println!(
            "{:<28} {:>9.2} {:>9.2} {:>9.2} {:>8.1}  {:>13.2} {:>8.1}%",
            provider,
            raw.p50,
            raw.p90,
            raw.p99,
            1e3 / raw.p50,
            full.p50,
            100.0 * (full.p50 - raw.p50) / raw.p50
        );
        p50s.push((provider, raw.p50));
    }
    if let [(a, ta), (b, tb), ..] = p50s.as_slice() {
        println!("p50 ratio {a} / {b}: {:.2}", ta / tb);
    }
    Ok(())
}

//! `unet-infer bench`: latency of the bare graph and of the whole pipeline,
//! per back end, side by side in one run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use image::{DynamicImage, Rgb, RgbImage};
use unet_runtime::{Segmenter, SegmenterOptions, Session, SessionOptions, Tensor4};

use crate::{parse_size, parse_threads, BackendChoice};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Frame size, WIDTHxHEIGHT (the network runs at the model's training
    /// geometry when it records one, else at this size padded).
    #[arg(long, value_parser = parse_size, default_value = "256x256")]
    size: (usize, usize),
    /// Run the network at the frame's native size even if the model records
    /// a training geometry.
    #[arg(long)]
    native: bool,
    /// Back ends to compare; default: tract and, when its library is found, ort.
    #[arg(long, value_enum, num_args = 1..)]
    backend: Vec<BackendChoice>,
    /// Timed runs per back end (after 3 warm-up runs).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    runs: u32,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2, value_parser = parse_threads)]
    threads: usize,
    /// GPU for ort-cuda / ort-tensorrt.
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    fp16: bool,
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

pub fn run(args: &BenchArgs) -> Result<()> {
    let runs = args.runs as usize;
    let (w, h) = args.size;
    if w * h > unet_runtime::DEFAULT_MAX_PIXELS {
        bail!(
            "--size {w}x{h} is above the frame limit of {} pixels",
            unet_runtime::DEFAULT_MAX_PIXELS
        );
    }
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
        fit: if args.native {
            unet_runtime::Fit::Pad
        } else {
            unet_runtime::Fit::Model
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
        "{} with {w}x{h} frames, {} threads, {runs} runs (ms)",
        args.model.display(),
        args.threads
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>8}  {:>13} {:>9}",
        "provider", "p50", "p90", "p99", "FPS", "pipeline p50", "overhead"
    );
    // The machine's own FMA peak on the instruction set in use, on as many
    // threads: what the tract path's GFLOP/s is a fraction of.
    let peak = unet_kernels::Isa::widest_in_use()
        .and_then(|isa| unet_kernels::measure(isa, args.threads.max(1), Duration::from_secs(1)));
    let mut p50s = Vec::new();
    let mut rates = Vec::new();
    for choice in choices {
        let backend = choice.backend(args.device, args.fp16, None);
        let session = Session::from_file_with(&args.model, backend, &options.session)
            .with_context(|| format!("loading {} on {choice:?}", args.model.display()))?;
        let mut segmenter = Segmenter::from_session(session, options.clone())?;
        let c = segmenter.info().in_channels;
        let (ih, iw) = segmenter.network_input_size(w, h)?;
        let input = Tensor4::new(
            (0..c * ih * iw)
                .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
                .collect(),
            [1, c, ih, iw],
        )?;
        let raw = time(runs, || {
            segmenter.session_mut().run(&input)?;
            Ok(())
        })?;
        let full = time(runs, || {
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
        if let Some(fmas) = segmenter.session().fmas() {
            rates.push((provider.clone(), fmas, 2.0 * fmas as f64 / raw.p50 / 1e6));
        }
        p50s.push((provider, raw.p50));
    }
    if let [(a, ta), (b, tb), ..] = p50s.as_slice() {
        println!("p50 ratio {a} / {b}: {:.2}", ta / tb);
    }
    for (provider, fmas, gflops) in rates {
        let share = match peak {
            Some(p) => format!(
                ", {:.0} % of the FMA peak ({:.0} GFLOP/s, {} on {} threads)",
                100.0 * gflops / p.gflops,
                p.gflops,
                p.isa.name(),
                p.threads
            ),
            None => String::new(),
        };
        println!(
            "{provider}: {:.2} GFLOP per run, {gflops:.0} GFLOP/s at p50{share}",
            2.0 * fmas as f64 / 1e9
        );
    }
    Ok(())
}

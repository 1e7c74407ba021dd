//! `unet-infer MODEL IMAGES...`: masks (and overlays) for image files and
//! directories. A bad image is reported and the rest still run; the exit
//! status says whether all succeeded.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use image::DynamicImage;

use crate::output::{check_free, output_stems, write_atomic};
use crate::{load_segmenter, BackendArgs, FitArgs};

#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// The ONNX model (pre-processing and training geometry are read from its metadata).
    #[arg(required = true)]
    model: Option<PathBuf>,
    /// Images (PNG, JPEG, BMP, TIFF, GIF) or directories of them.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Directory for `<name>_mask.png` (and `<name>_overlay.png`).
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    fit: FitArgs,
    /// Also write the mask blended over the image.
    #[arg(long)]
    overlay: bool,
    /// Replace outputs that already exist (by default that is an error).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(args: &SegmentArgs, quiet: bool) -> Result<()> {
    let model = args.model.as_deref().context("no model given")?;
    let images = unet_runtime::expand_inputs(&args.images)?;
    let stems = output_stems(&images)?;
    let outputs: Vec<(PathBuf, Option<PathBuf>)> = stems
        .iter()
        .map(|s| {
            (
                args.output.join(format!("{s}_mask.png")),
                args.overlay
                    .then(|| args.output.join(format!("{s}_overlay.png"))),
            )
        })
        .collect();
    let all: Vec<PathBuf> = outputs
        .iter()
        .flat_map(|(m, o)| std::iter::once(m.clone()).chain(o.clone()))
        .collect();
    check_free(&all, args.overwrite)?;
    let mut segmenter = load_segmenter(model, &args.fit, &args.backend)?;
    if !quiet {
        let how = match segmenter.resize_geometry() {
            Some(g) => format!(
                "frames resized to {}x{} ({})",
                g.width,
                g.height,
                g.resize.as_str()
            ),
            None => "native resolution".to_string(),
        };
        eprintln!(
            "{}: {}, {how}",
            model.display(),
            segmenter.session().provider()
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut failed = Vec::new();
    for (path, (mask_path, overlay_path)) in images.iter().zip(&outputs) {
        let mut one = || -> Result<f64> {
            let image = unet_runtime::decode_image(path, args.fit.max_pixels)?;
            let seg = segmenter
                .segment(&image)
                .with_context(|| format!("segmenting {}", path.display()))?;
            write_png(mask_path, &DynamicImage::ImageLuma8(seg.mask_image()))?;
            if let Some(overlay_path) = overlay_path {
                let picture = unet_runtime::overlay(&image, &seg);
                write_png(overlay_path, &DynamicImage::ImageRgb8(picture))?;
            }
            let fg = seg.mask.iter().filter(|&&m| m > 0).count();
            Ok(100.0 * fg as f64 / seg.mask.len() as f64)
        };
        match one() {
            Ok(fg) if !quiet => println!(
                "{} -> {} ({fg:.1} % foreground)",
                path.display(),
                mask_path.display()
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e:#}");
                failed.push(path.display().to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} images failed: {}",
            failed.len(),
            images.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

pub fn write_png(path: &std::path::Path, image: &DynamicImage) -> Result<()> {
    write_atomic(path, |w| {
        let mut buf = std::io::Cursor::new(Vec::new());
        image.write_to(&mut buf, image::ImageFormat::Png)?;
        w.write_all(buf.get_ref())?;
        Ok(())
    })
}

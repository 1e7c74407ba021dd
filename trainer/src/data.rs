//! Data sets on disk (Kvasir-SEG, Carvana, generic image/mask folders): layout
//! detection, stem matching, validation, decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use image::{ColorType, ImageDecoder, ImageReader};

use crate::error::{FileProblem, Result, TrainError};

/// A decoded image/mask pair before augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    /// `[H, W, C]`, values in [0, 1].
    pub image: Vec<f32>,
    /// `[H, W]` class indices (0/1 for binary masks).
    pub mask: Vec<u8>,
}

impl RawSample {
    /// The image as `[C, H, W]` planes, what the shared resampler takes.
    pub fn planar(&self) -> unet_spec::Planar {
        let (c, plane) = (self.channels, self.width * self.height);
        let mut data = vec![0.0f32; c * plane];
        for (i, px) in self.image.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                data[ch * plane + i] = v;
            }
        }
        unet_spec::Planar::new(c, self.width, self.height, data)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// `images/NAME.jpg` + `masks/NAME.jpg`.
    KvasirSeg,
    /// `train/NAME.jpg` + `train_masks/NAME_mask.gif`.
    Carvana,
    /// `--images DIR --masks DIR`, stems matched (a `_mask` suffix is allowed).
    Generic,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutKind::KvasirSeg => "Kvasir-SEG (images/ + masks/)",
            LayoutKind::Carvana => "Carvana (train/ + train_masks/NAME_mask.gif)",
            LayoutKind::Generic => "generic (--images + --masks)",
        })
    }
}

/// Where the images and masks of a data set are.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub kind: LayoutKind,
    pub images: PathBuf,
    pub masks: PathBuf,
}

impl DataSpec {
    /// Recognises the layout of `dir`.
    pub fn detect(dir: &Path) -> Result<Self> {
        let has = |name: &str| dir.join(name).is_dir();
        let (kind, images, masks) = if has("images") && has("masks") {
            (LayoutKind::KvasirSeg, "images", "masks")
        } else if has("train") && has("train_masks") {
            (LayoutKind::Carvana, "train", "train_masks")
        } else {
            let found = match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names.truncate(10);
                    if names.is_empty() {
                        "nothing (empty folder)".to_string()
                    } else {
                        names.join(", ")
                    }
                }
                Err(source) => {
                    return Err(TrainError::Io {
                        dir: dir.to_path_buf(),
                        what: "cannot read the data folder".into(),
                        source,
                    })
                }
            };
            return Err(TrainError::UnknownLayout {
                dir: dir.to_path_buf(),
                found,
            });
        };
        Ok(DataSpec {
            kind,
            images: dir.join(images),
            masks: dir.join(masks),
        })
    }

    pub fn generic(images: &Path, masks: &Path) -> Self {
        DataSpec {
            kind: LayoutKind::Generic,
            images: images.to_path_buf(),
            masks: masks.to_path_buf(),
        }
    }
}

/// An image and its mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub stem: String,
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// What [`scan`] found: the usable pairs and what `--skip-bad` skipped.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub pairs: Vec<Pair>,
    pub skipped: Vec<FileProblem>,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff"];

/// Image files of `dir` by stem, sorted.
fn list_images(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
        dir: dir.to_path_buf(),
        what: "cannot list the folder".into(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !is_image || hidden || !path.is_file() {
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            out.insert(stem.to_string(), path);
        }
    }
    Ok(out)
}

/// Channels of a colour type, alpha not counted.
fn colour_channels(c: ColorType) -> usize {
    match c {
        ColorType::L8 | ColorType::L16 | ColorType::La8 | ColorType::La16 => 1,
        _ => 3,
    }
}

/// Reads only the header: `(width, height, colour type)`.
fn probe(path: &Path) -> std::result::Result<(u32, u32, ColorType), String> {
    let reader = ImageReader::open(path)
        .map_err(|e| format!("cannot open: {e}"))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not an image (unknown format)".into());
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("unreadable image: {e}"))?;
    let (w, h) = decoder.dimensions();
    Ok((w, h, decoder.color_type()))
}

/// Matches images to masks by stem and checks every pair's headers: readable,
/// image channels equal to `in_channels`, mask the image's size (and a single
/// channel for `classes > 1`). Problems are collected over the whole data set
/// and reported together, or skipped when `skip_bad`.
pub fn scan(
    spec: &DataSpec,
    in_channels: usize,
    classes: usize,
    skip_bad: bool,
) -> Result<ScanReport> {
    let images = list_images(&spec.images)?;
    if images.is_empty() {
        return Err(TrainError::Empty {
            dir: spec.images.clone(),
        });
    }
    let mut masks = BTreeMap::new();
    for (stem, path) in list_images(&spec.masks)? {
        let key = match spec.kind {
            LayoutKind::KvasirSeg => stem,
            LayoutKind::Carvana | LayoutKind::Generic => match stem.strip_suffix("_mask") {
                Some(s) if !images.contains_key(&stem) => s.to_string(),
                _ => stem,
            },
        };
        masks.insert(key, path);
    }

    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for (stem, image) in &images {
        let Some(mask) = masks.get(stem) else {
            problems.push(FileProblem {
                path: image.clone(),
                reason: format!("no mask with stem `{stem}` in {}", spec.masks.display()),
            });
            continue;
        };
        let img = probe(image);
        let msk = probe(mask);
        let mut bad = false;
        if let Err(reason) = &img {
            problems.push(FileProblem {
                path: image.clone(),
                reason: reason.clone(),
            });
            bad = true;
        }
        if let Err(reason) = &msk {
            problems.push(FileProblem {
                path: mask.clone(),
                reason: reason.clone(),
            });
            bad = true;
        }
        if let (Ok((iw, ih, ic)), Ok((mw, mh, mc))) = (img, msk) {
            if colour_channels(ic) != in_channels {
                problems.push(FileProblem {
                    path: image.clone(),
                    reason: format!(
                        "image has {} channel(s) ({ic:?}), the model expects {in_channels}",
                        colour_channels(ic)
                    ),
                });
                bad = true;
            }
            if (iw, ih) != (mw, mh) {
                problems.push(FileProblem {
                    path: mask.clone(),
                    reason: format!(
                        "mask is {mw}x{mh}, its image {} is {iw}x{ih}",
                        image.display()
                    ),
                });
                bad = true;
            }
            if classes > 1 && colour_channels(mc) != 1 {
                problems.push(FileProblem {
                    path: mask.clone(),
                    reason: format!(
                        "multi-class masks must be single-channel class-index images, this one is {mc:?}"
                    ),
                });
                bad = true;
            }
        }
        if !bad {
            pairs.push(Pair {
                stem: stem.clone(),
                image: image.clone(),
                mask: mask.clone(),
            });
        }
    }
    for (stem, mask) in &masks {
        if !images.contains_key(stem) {
            problems.push(FileProblem {
                path: mask.clone(),
                reason: format!("no image with stem `{stem}` in {}", spec.images.display()),
            });
        }
    }
    if !problems.is_empty() && !skip_bad {
        return Err(TrainError::BadFiles {
            count: problems.len(),
            problems,
        });
    }
    if pairs.is_empty() {
        return Err(TrainError::TooFewSamples {
            reason: format!("no usable image/mask pair in {}", spec.images.display()),
        });
    }
    Ok(ScanReport {
        pairs,
        skipped: problems,
    })
}

fn open(path: &Path) -> Result<image::DynamicImage> {
    ImageReader::open(path)
        .map_err(|source| TrainError::Io {
            dir: path.to_path_buf(),
            what: "cannot open".into(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| TrainError::Io {
            dir: path.to_path_buf(),
            what: "cannot read".into(),
            source,
        })?
        .decode()
        .map_err(|reason| TrainError::Image {
            path: path.to_path_buf(),
            reason,
        })
}

/// Decodes a pair. Binary masks (`classes == 1`) are foreground where the gray
/// value exceeds 127; multi-class masks hold class indices below `classes`.
pub fn load_pair(pair: &Pair, in_channels: usize, classes: usize) -> Result<RawSample> {
    let img = open(&pair.image)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let image: Vec<f32> = if in_channels == 1 {
        img.to_luma32f().into_raw()
    } else {
        img.to_rgb32f().into_raw()
    };
    let m = open(&pair.mask)?.to_luma8();
    if (m.width() as usize, m.height() as usize) != (width, height) {
        return Err(TrainError::BadSample {
            path: pair.mask.clone(),
            reason: format!(
                "mask is {}x{}, image is {width}x{height}",
                m.width(),
                m.height()
            ),
        });
    }
    let raw = m.into_raw();
    let mask = if classes == 1 {
        raw.into_iter().map(|v| u8::from(v > 127)).collect()
    } else {
        if let Some(&v) = raw.iter().find(|&&v| v as usize >= classes) {
            return Err(TrainError::BadSample {
                path: pair.mask.clone(),
                reason: format!("class index {v} out of range for {classes} classes"),
            });
        }
        raw
    };
    Ok(RawSample {
        width,
        height,
        channels: in_channels,
        image,
        mask,
    })
}

/// Where samples come from: files decoded on demand, or samples in memory.
pub trait Source: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, index: usize) -> Result<RawSample>;
    /// A name for messages and previews.
    fn name(&self, index: usize) -> String;
}

pub struct FileSource {
    pub pairs: Vec<Pair>,
    pub in_channels: usize,
    pub classes: usize,
}

impl Source for FileSource {
    fn len(&self) -> usize {
        self.pairs.len()
    }
    fn get(&self, index: usize) -> Result<RawSample> {
        let pair = self
            .pairs
            .get(index)
            .ok_or_else(|| TrainError::TooFewSamples {
                reason: format!("sample {index} out of range"),
            })?;
        load_pair(pair, self.in_channels, self.classes)
    }
    fn name(&self, index: usize) -> String {
        self.pairs
            .get(index)
            .map(|p| p.stem.clone())
            .unwrap_or_default()
    }
}

pub struct MemorySource {
    pub samples: Vec<RawSample>,
}

impl Source for MemorySource {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn get(&self, index: usize) -> Result<RawSample> {
        self.samples
            .get(index)
            .cloned()
            .ok_or_else(|| TrainError::TooFewSamples {
                reason: format!("sample {index} out of range"),
            })
    }
    fn name(&self, index: usize) -> String {
        format!("synthetic_{index:04}")
    }
}

/// Per-channel mean and standard deviation of pixel values in [0, 1].
pub fn channel_stats(samples: &[RawSample]) -> (Vec<f32>, Vec<f32>) {
    let channels = samples.first().map_or(3, |s| s.channels);
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    let mut n = 0f64;
    for s in samples {
        for px in s.image.chunks_exact(s.channels) {
            for (c, &v) in px.iter().enumerate() {
                sum[c] += v as f64;
                sq[c] += (v as f64) * (v as f64);
            }
            n += 1.0;
        }
    }
    let n = n.max(1.0);
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&sum)
        .map(|(q, s)| ((q / n - (s / n).powi(2)).max(1e-6).sqrt()) as f32)
        .collect();
    (mean, std)
}

//! Image files to frames: the format read from the content (a PNG named
//! `.jpg` is still a PNG), decoder memory bounded, directories expanded, and
//! every failure naming the file.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, Limits};

use crate::error::{Result, RuntimeError};

/// File name extensions taken from a directory (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif"];

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BadImageFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Decodes `path`, refusing frames of more than `max_pixels` pixels before
/// their memory is allocated (decompression bombs included).
pub fn decode_image(path: &Path, max_pixels: usize) -> Result<DynamicImage> {
    if path.is_dir() {
        return Err(bad(
            path,
            "is a directory (pass the directory itself to take its images)",
        ));
    }
    let reader = ImageReader::open(path)
        .map_err(|reason| RuntimeError::Io {
            path: path.to_path_buf(),
            reason,
        })?
        .with_guessed_format()
        .map_err(|reason| RuntimeError::Io {
            path: path.to_path_buf(),
            reason,
        })?;
    if reader.format().is_none() {
        return Err(bad(
            path,
            "not an image this build reads (PNG, JPEG, BMP, TIFF, GIF)",
        ));
    }
    let (w, h) = {
        let mut probe = ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|reason| RuntimeError::Io {
                path: path.to_path_buf(),
                reason,
            })?;
        probe.limits(Limits::default());
        probe
            .into_dimensions()
            .map_err(|e| bad(path, e.to_string()))?
    };
    let pixels = (w as usize).saturating_mul(h as usize);
    if pixels > max_pixels {
        return Err(bad(
            path,
            format!("{w}x{h} is {pixels} pixels, above the limit of {max_pixels} (--max-pixels)"),
        ));
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    // RGBA16 at the pixel limit, plus the decoder's own buffers.
    limits.max_alloc = Some((max_pixels as u64).saturating_mul(16));
    reader.limits(limits);
    reader.decode().map_err(|e| bad(path, e.to_string()))
}

/// The images to process: files as given, directories expanded to their image
/// files (sorted, not recursive).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|reason| RuntimeError::Io {
                path: input.clone(),
                reason,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_image_extension(p))
                .collect();
            if files.is_empty() {
                return Err(bad(input, "directory holds no image files"));
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_content_and_directories_expand() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("b.jpg");
        image::RgbImage::from_pixel(5, 4, image::Rgb([1, 2, 3]))
            .save_with_format(&png, image::ImageFormat::Png)
            .unwrap();
        let img = decode_image(&png, 100).unwrap();
        assert_eq!((img.width(), img.height()), (5, 4));
        // Over the pixel limit: refused before decoding.
        let e = decode_image(&png, 19).unwrap_err().to_string();
        assert!(e.contains("b.jpg") && e.contains("limit"), "{e}");
        std::fs::write(dir.path().join("a.png"), b"not an image").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.jpg"]);
        let e = decode_image(&files[0], 100).unwrap_err().to_string();
        assert!(e.contains("a.png"), "{e}");
        let e = decode_image(dir.path(), 100).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}

//! NumPy files: `.npy` arrays (format 1.0, little-endian f32, C order) and
//! `.npz` archives of them (an uncompressed zip, as `numpy.savez` writes),
//! one `case{i}.npz` per case with the graph's input and output, the bundle
//! `tract --assert-output-bundle` and `numpy.load` read.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use super::NamedCase;
use crate::error::{ExportError, Result};
use crate::runner::Tensor4 as Nchw;

pub(crate) fn write(
    dir: &Path,
    cases: &[NamedCase],
    input_name: &str,
    output_name: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = dir.join(format!("case{i}.npz"));
        let bytes = npz(&[(input_name, case.input), (output_name, &case.output)]).map_err(|e| {
            ExportError::Io {
                path: path.clone(),
                reason: std::io::Error::other(e.to_string()),
            }
        })?;
        unet_models::io::atomic_write(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

/// An `.npz` archive of named arrays.
fn npz(arrays: &[(&str, &Nchw)]) -> zip::result::ZipResult<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for (name, t) in arrays {
        zip.start_file(format!("{name}.npy"), options)?;
        zip.write_all(&npy(t))?;
    }
    Ok(zip.finish()?.into_inner())
}

/// One `.npy` file: magic, version 1.0, a header dict padded with spaces
/// so the data starts at a multiple of 64 bytes, then the raw values.
pub(crate) fn npy(t: &Nchw) -> Vec<u8> {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        shape.join(", ")
    );
    // magic (6) + version (2) + header length (2) + header + '\n'
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * t.data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_padded_to_64_bytes() {
        let t = Nchw {
            data: vec![1.0, -2.0],
            shape: [1, 1, 1, 2],
        };
        let b = npy(&t);
        let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (1, 1, 1, 2)") && header.ends_with('\n'));
        assert_eq!(&b[10 + header_len..], &[0, 0, 128, 63, 0, 0, 0, 192]);
    }
}

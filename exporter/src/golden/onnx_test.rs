//! ONNX test-data folders: `test_data_set_{i}/input_0.pb` and `output_0.pb`,
//! one serialised `TensorProto` each (f32, `raw_data`), the layout of ONNX's
//! backend tests that `onnx_test_runner` and `onnx.numpy_helper.to_array`
//! read. Copy the ONNX file in as `model.onnx` to run them.

use std::path::{Path, PathBuf};

use prost::Message;

use super::NamedCase;
use crate::error::Result;
use crate::onnx::{tensor_f32, Elem};
use crate::runner::Tensor4 as Nchw;

pub(crate) fn write(
    dir: &Path,
    cases: &[NamedCase],
    input_name: &str,
    output_name: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let set = dir.join(format!("test_data_set_{i}"));
        super::create_dir(&set)?;
        for (file, name, t) in [
            ("input_0.pb", input_name, case.input),
            ("output_0.pb", output_name, &case.output),
        ] {
            let path = set.join(file);
            unet_models::io::atomic_write(&path, &tensor_bytes(name, t))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn tensor_bytes(name: &str, t: &Nchw) -> Vec<u8> {
    tensor_f32(name, &t.shape, &t.data, Elem::F32).encode_to_vec()
}

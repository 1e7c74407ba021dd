//! Torch-exported fixture graphs (fixtures/<case>/model.onnx, written by
//! PyTorch's dynamo exporter, not by this project) against PyTorch's own
//! eval outputs (fixtures/<case>/io.safetensors).

use unet_runtime::{Backend, Ep, Session};

use crate::common::*;

const CASES: &[&str] = &["unet", "unet-bilinear", "unet-paper", "attention-unet"];

fn check(backend: Backend) {
    for case in CASES {
        let mut session = Session::from_file(fixture(case, "model.onnx"), backend.clone())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let io = fixture(case, "io.safetensors");
        let input = load_tensor(&io, "input");
        let expected = load_tensor(&io, "eval_output");
        let got = session
            .run(&input)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(got.shape, expected.shape, "{case}");
        let err = max_abs_diff(&got.data, &expected.data);
        assert!(
            err <= GOLDEN_ATOL,
            "{case} on {}: max abs err {err}",
            session.provider()
        );
        // A second frame reuses the cached plan and must give the same result.
        let again = session
            .run(&input)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(again.data, got.data, "{case}: second run differs");
    }
}

#[cfg(feature = "tract")]
#[test]
fn fixtures_match_pytorch_on_tract() {
    check(Backend::Tract);
}

#[test]
fn fixtures_match_pytorch_on_ort() {
    if ort_available("fixtures_match_pytorch_on_ort") {
        check(Backend::Ort(Ep::Cpu));
    }
}

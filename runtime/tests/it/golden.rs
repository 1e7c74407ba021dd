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

/// The same models as tract NNEF archives (`runtime/tests/data/nnef/`,
/// written by `unet-export fixtures/<case>/weights.safetensors -o m.onnx &&
/// unet-export nnef m.onnx --weights fixtures/<case>/weights.safetensors`),
/// which the ONNX-free build reads: loaded from a file and from memory.
#[cfg(feature = "nnef")]
#[test]
fn nnef_archives_match_pytorch_on_tract() {
    use unet_runtime::SessionOptions;
    for case in ["unet", "attention-unet"] {
        let path = data(&format!("nnef/{case}.nnef.tar"));
        let io = fixture(case, "io.safetensors");
        let input = load_tensor(&io, "input");
        let expected = load_tensor(&io, "eval_output");
        let bytes = std::fs::read(&path).unwrap();
        let from_file = Session::from_file(&path, Backend::Auto).unwrap();
        let from_memory =
            Session::from_bytes(&bytes, Backend::Tract, &SessionOptions::default()).unwrap();
        for mut session in [from_file, from_memory] {
            assert_eq!(session.provider(), "tract", "{case}: NNEF runs on tract");
            assert!(session.metadata().contains_key("unet.config"), "{case}");
            let got = session
                .run(&input)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let err = max_abs_diff(&got.data, &expected.data);
            assert!(err <= GOLDEN_ATOL, "{case} from NNEF: max abs err {err}");
        }
        // H and W are symbolic multiples of 8: another size plans afresh,
        // one that is no multiple is refused with the reason.
        let [_, c, h, w] = input.shape;
        let mut session = Session::from_file(&path, Backend::Tract).unwrap();
        let small = unet_runtime::Tensor4 {
            data: input.data[..c * (h / 2) * w].to_vec(),
            shape: [1, c, h / 2, w],
        };
        assert_eq!(session.run(&small).unwrap().shape[2..], [h / 2, w]);
        let odd = unet_runtime::Tensor4 {
            data: vec![0.0; c * 12 * w],
            shape: [1, c, 12, w],
        };
        let err = session.run(&odd).unwrap_err().to_string();
        assert!(err.contains("height") && err.contains("8"), "{err}");
        // ONNX Runtime reads ONNX: the archive is refused with the reason.
        let Err(err) = Session::from_file(&path, Backend::Ort(Ep::Cpu)) else {
            panic!("{case}: ONNX Runtime took an NNEF archive");
        };
        let err = err.to_string();
        assert!(
            err.contains("NNEF archive") && err.contains("tract"),
            "{err}"
        );
    }
}

#[test]
fn fixtures_match_pytorch_on_ort() {
    if ort_available("fixtures_match_pytorch_on_ort") {
        check(Backend::Ort(Ep::Cpu));
    }
}

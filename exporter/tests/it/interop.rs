//! Files other tools write and read: PyTorch checkpoints in, ONNX files from
//! elsewhere annotated and checked, goldens in ONNX test-data, npz and
//! Polygraphy formats.

use prost::Message;
use unet_exporter::import::MASK_VALUES_KEY;
use unet_exporter::runner::Runner;
use unet_models::candle_core::{Device, Tensor};
use unet_models::io::{self, ConfigSource};
use unet_models::milesial;

use crate::common::*;

/// Both checkpoint layouts of fixtures/generate.py (`write_checkpoint`).
const CHECKPOINTS: [(&str, &str); 2] = [
    ("milesial-transposed", "bare state_dict"),
    (
        "milesial-bilinear",
        "state_dict under `model`, `module.` prefixes removed",
    ),
];

#[test]
fn pth_checkpoints_import_to_the_same_model_as_their_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    for (case, layout) in CHECKPOINTS {
        let pth = fixtures().join(case).join("checkpoint.pth");
        let ckpt = unet_exporter::import::read_pth(&pth).unwrap();
        assert_eq!(ckpt.layout, layout);
        assert_eq!(ckpt.metadata[MASK_VALUES_KEY], "[0,1]");

        let out = dir.path().join(format!("{case}.safetensors"));
        let o = unet_export(&["import", pth.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{:?}", text(&o));
        // Self-describing: loads without --from or a config, same weights and
        // output as the safetensors state_dict, mask_values kept.
        let imported = io::load(&out, ConfigSource::Metadata, &Device::Cpu).unwrap();
        let reference = milesial::load(
            &fixtures().join(case).join("state_dict.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(imported.model.config(), reference.model.config());
        assert_eq!(imported.metadata[MASK_VALUES_KEY], "[0,1]");
        assert_eq!(imported.metadata[milesial::SOURCE_KEY], milesial::SOURCE);
        let ours: std::collections::HashMap<_, _> =
            imported.model.state_dict().into_iter().collect();
        for (name, t) in reference.model.state_dict() {
            let a: Vec<f32> = t
                .flatten_all()
                .unwrap()
                .to_dtype(unet_models::candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            let b: Vec<f32> = ours[&name]
                .flatten_all()
                .unwrap()
                .to_dtype(unet_models::candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(a, b, "{case}: {name}");
        }
        let input = io_tensor(case, "input");
        let expected = io_tensor(case, "eval_output");
        let x = Tensor::from_slice(&input.data, input.shape.as_slice(), &Device::Cpu).unwrap();
        let y: Vec<f32> = imported
            .model
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let err = y
            .iter()
            .zip(&expected.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= GOLDEN_ATOL, "{case}: {err}");

        // Exported straight from the .pth, with its check.
        let onnx = dir.path().join(format!("{case}.onnx"));
        let o = unet_export(&[
            "--from",
            "milesial",
            pth.to_str().unwrap(),
            "-o",
            onnx.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        assert!(text(&o).0.contains("parity: PASS"));
        let got = run(Runner::Tract, &onnx, &input);
        assert!(max_abs(&expected, &got) <= GOLDEN_ATOL, "{case}");
    }
}

#[test]
fn files_that_are_not_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // A zip archive without a pickle.
    let fake = dir.path().join("fake.pth");
    std::fs::write(&fake, b"PK\x03\x04 not really a zip").unwrap();
    let o = unet_export(&["import", fake.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(
        text(&o).1.contains("fake.pth") && text(&o).1.contains("not a PyTorch checkpoint"),
        "{:?}",
        text(&o)
    );
    // Our layout asked of a milesial checkpoint: names the unknown tensor.
    let pth = fixtures().join("milesial-transposed/checkpoint.pth");
    let o = unet_export(&[
        "import",
        "--from",
        "unet",
        "--preset",
        "unet-16",
        pth.to_str().unwrap(),
        "-o",
        dir.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("checkpoint.pth"), "{:?}", text(&o));
}

#[test]
fn annotate_adds_metadata_the_runtime_reads() {
    let dir = tempfile::tempdir().unwrap();
    // A torch.onnx.export with torch's own layer naming and no metadata.
    let foreign = fixtures().join("unet/model.onnx");
    let out = dir.path().join("annotated.onnx");
    let o = unet_export(&[
        "annotate",
        foreign.to_str().unwrap(),
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--head",
        "sigmoid",
        "--multiple",
        "32",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let proto =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let before =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&foreign).unwrap().as_slice()).unwrap();
    assert_eq!(proto.graph, before.graph, "the graph is left as it is");
    let m = metadata(&proto);
    assert_eq!(m["unet.head"], "sigmoid");
    assert_eq!(m["unet.size_multiple"], "32");
    let session = unet_runtime::Session::from_file(&out, unet_runtime::Backend::Tract).unwrap();
    let info = unet_runtime::ModelInfo::from_metadata(session.metadata(), Some(3)).unwrap();
    assert_eq!(
        info.size_rule,
        unet_runtime::SizeRule::Same { multiple: 32 }
    );
    assert_eq!(info.preprocessing.mean, vec![0.485, 0.456, 0.406]);
    assert_eq!(info.preprocessing.std, vec![0.229, 0.224, 0.225]);
    assert_eq!(info.head, unet_runtime::Head::Sigmoid);

    // What the runtime would refuse is refused here, and nothing is written.
    let refused = dir.path().join("refused.onnx");
    for (mean, std, expect) in [
        ("0.5", "0.5,0.5,0.5", "1 means and 3 stds"),
        (
            "0.5,0.5,0.5",
            "0.5,0,0.5",
            "std must be finite and non-zero",
        ),
    ] {
        let o = unet_export(&[
            "annotate",
            foreign.to_str().unwrap(),
            "--mean",
            mean,
            "--std",
            std,
            "-o",
            refused.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
        assert!(text(&o).1.contains(expect), "{:?}", text(&o));
        assert!(!refused.exists());
    }
}

#[test]
fn check_of_an_onnx_file_alone_compares_tract_with_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = fixtures().join("unet/model.onnx");
    let json = dir.path().join("report.json");
    let o = unet_export(&[
        "check",
        foreign.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    if !runners().contains(&Runner::OrtCpu) {
        // Without ONNX Runtime there is nothing to compare with: an input error.
        assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
        assert!(text(&o).1.contains("ONNX Runtime"), "{:?}", text(&o));
        return;
    }
    assert!(o.status.success(), "{:?}", text(&o));
    let (stdout, _) = text(&o);
    assert!(stdout.contains("tract vs onnxruntime"), "{stdout}");
    assert!(stdout.contains("parity: PASS"), "{stdout}");
    let report = read_json(&json);
    let cases = report["backends"][0]["cases"].as_array().unwrap();
    // Two sizes (multiple 32 by default), random inputs and frames each.
    assert_eq!(cases.len(), 4, "{report}");
    assert_eq!(cases[0]["input_shape"], serde_json::json!([2, 3, 64, 64]));
    assert!(cases.iter().all(|c| c["max_abs"].as_f64().unwrap() < 1e-4));

    // A damaged copy: tract and ONNX Runtime still agree with each other, so
    // this gate is about back ends, not weights; a file tract cannot run fails.
    let notonnx = dir.path().join("not.onnx");
    std::fs::write(&notonnx, b"not a model").unwrap();
    let o = unet_export(&["check", notonnx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
}

#[test]
fn goldens_in_other_tools_formats_hold_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let unet = weights("unet");
    let mut outs = Vec::new();
    for format in ["unet", "onnx-test", "npz", "polygraphy"] {
        let out = dir.path().join(format);
        let o = unet_export(&[
            "golden",
            unet.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--format",
            format,
            "--head",
            "sigmoid",
        ]);
        assert!(o.status.success(), "{format}: {:?}", text(&o));
        outs.push(out);
    }
    let golden = unet_exporter::golden::read_golden(&outs[0]).unwrap();
    let sigmoid = |t: &unet_exporter::runner::Tensor4| {
        unet_exporter::check::apply_head(unet_exporter::Head::Sigmoid, t)
    };

    // ONNX test data: one TensorProto per file, raw little-endian f32.
    for (i, (case, logits)) in golden.cases.iter().zip(&golden.logits).enumerate() {
        let set = outs[1].join(format!("test_data_set_{i}"));
        let read = |f: &str| {
            tract_onnx::pb::TensorProto::decode(std::fs::read(set.join(f)).unwrap().as_slice())
                .unwrap()
        };
        let (input, output) = (read("input_0.pb"), read("output_0.pb"));
        assert_eq!(input.name, "input");
        assert_eq!(output.name, "probabilities");
        assert_eq!(input.dims, case.input.shape.map(|d| d as i64).to_vec());
        let floats = |raw: &[u8]| -> Vec<f32> {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        assert_eq!(floats(&input.raw_data), case.input.data);
        assert_eq!(floats(&output.raw_data), sigmoid(logits).data);
    }
    assert!(!outs[1]
        .join(format!("test_data_set_{}", golden.cases.len()))
        .exists());

    // npz: a zip of .npy files named after the graph's input and output.
    let npz = std::fs::File::open(outs[2].join("case0.npz")).unwrap();
    let mut zip = zip::ZipArchive::new(npz).unwrap();
    let mut names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .map(|n| n.into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["input.npy", "probabilities.npy"]);
    let mut npy = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("probabilities.npy").unwrap(), &mut npy).unwrap();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let data: Vec<f32> = npy[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(data, sigmoid(&golden.logits[0]).data);

    // Polygraphy: a list of feed dicts and RunResults.
    let inputs = read_json(&outs[3].join("inputs.json"));
    assert_eq!(inputs.as_array().unwrap().len(), golden.cases.len());
    assert_eq!(inputs[0]["input"]["polygraphy_class"], "ndarray");
    let outputs = read_json(&outs[3].join("outputs.json"));
    assert_eq!(outputs["polygraphy_class"], "RunResults");
    let iterations = outputs["lst"][0][1].as_array().unwrap();
    assert_eq!(iterations.len(), golden.cases.len());
    assert_eq!(
        iterations[0]["outputs"]["probabilities"]["values"]["polygraphy_class"],
        "ndarray"
    );
}

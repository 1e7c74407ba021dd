//! The exported graph against the PyTorch reference outputs of fixtures/.

use std::collections::HashSet;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{ModelProto, ValueInfoProto};
use unet_exporter::check::{self, CheckOptions, Tolerance};
use unet_exporter::runner::{Runner, Tensor4};
use unet_exporter::{golden, lower, ExportError, ExportOptions, Head, InputShape};
use unet_models::config::{CONFIG_KEY, PREPROCESSING_KEY};

use crate::common::*;

fn proto(case: &str, opts: &ExportOptions) -> ModelProto {
    let loaded = load(case);
    lower::export(&loaded.model, &loaded.preprocessing, &loaded.metadata, opts).unwrap()
}

fn count_ops(p: &ModelProto, op: &str) -> usize {
    p.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == op)
        .count()
}

fn dims(v: &ValueInfoProto) -> Vec<String> {
    let Some(TypeValue::TensorType(t)) = v.r#type.as_ref().unwrap().value.as_ref() else {
        panic!("not a tensor");
    };
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) => v.to_string(),
            Some(DimValue::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect()
}

#[test]
fn every_fixture_case_matches_pytorch_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for case in CASES {
        let path = export_to(&load(case), &ExportOptions::default(), dir.path(), case);
        let input = io_tensor(case, "input");
        let expected = io_tensor(case, "eval_output");
        for runner in runners() {
            let got = run(runner, &path, &input);
            let err = max_abs(&expected, &got);
            assert!(
                err <= GOLDEN_ATOL,
                "{case} on {}: max abs {err}",
                runner.name()
            );
        }
    }
}

#[test]
fn fold_bn_removes_batchnorm_and_keeps_the_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (case, bn_nodes) in [("unet", 14), ("attention-unet", 14 + 3 * 3)] {
        let plain = proto(case, &ExportOptions::default());
        assert_eq!(count_ops(&plain, "BatchNormalization"), bn_nodes, "{case}");
        let folded_opts = ExportOptions {
            fold_bn: true,
            ..ExportOptions::default()
        };
        let folded = proto(case, &folded_opts);
        assert_eq!(count_ops(&folded, "BatchNormalization"), 0, "{case}");
        assert_eq!(count_ops(&folded, "Conv"), count_ops(&plain, "Conv"));
        // Every convolution has a bias now, including those that had none before BN.
        let graph = folded.graph.as_ref().unwrap();
        assert!(graph
            .node
            .iter()
            .filter(|n| n.op_type == "Conv")
            .all(|n| n.input.len() == 3));
        assert!(graph
            .initializer
            .iter()
            .any(|t| t.name == "encoder.0.conv.0.bias"));
        assert_eq!(metadata(&folded)["unet.fold_bn"], "true");

        let input = io_tensor(case, "input");
        let expected = io_tensor(case, "eval_output");
        let a = run(
            Runner::Tract,
            &export_to(&load(case), &ExportOptions::default(), dir.path(), "plain"),
            &input,
        );
        let b = run(
            Runner::Tract,
            &export_to(&load(case), &folded_opts, dir.path(), "folded"),
            &input,
        );
        assert!(
            max_abs(&a, &b) <= 2e-5,
            "{case}: folded vs plain {}",
            max_abs(&a, &b)
        );
        assert!(
            max_abs(&expected, &b) <= GOLDEN_ATOL,
            "{case}: folded vs PyTorch"
        );
    }
}

#[test]
fn opset_matrix() {
    let dir = tempfile::tempdir().unwrap();
    for (opset, ir) in [(13, 7), (17, 8), (21, 10)] {
        // Resize (bilinear), Slice with computed offsets (valid), attention gates.
        for case in ["unet-bilinear", "unet-paper", "attention-unet"] {
            let opts = ExportOptions {
                opset,
                ..ExportOptions::default()
            };
            let p = proto(case, &opts);
            assert_eq!(p.opset_import[0].version, opset);
            assert_eq!(p.ir_version, ir);
            let path = export_to(&load(case), &opts, dir.path(), &format!("{case}-{opset}"));
            for runner in runners() {
                let got = run(runner, &path, &io_tensor(case, "input"));
                let err = max_abs(&io_tensor(case, "eval_output"), &got);
                assert!(
                    err <= GOLDEN_ATOL,
                    "{case} opset {opset} on {}: {err}",
                    runner.name()
                );
            }
        }
    }
    let loaded = load("unet");
    for opset in [11, 12, 22] {
        let opts = ExportOptions {
            opset,
            ..ExportOptions::default()
        };
        let err = lower::export(
            &loaded.model,
            &loaded.preprocessing,
            &loaded.metadata,
            &opts,
        )
        .unwrap_err();
        assert!(
            matches!(err, ExportError::UnsupportedOpset { opset: o, min: 13, max: 21 } if o == opset),
            "{err}"
        );
    }
}

#[test]
fn fp16_stays_within_its_tolerance_with_f32_edges() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        fp16: true,
        ..ExportOptions::default()
    };
    for case in ["unet", "unet-bilinear", "unet-paper"] {
        let p = proto(case, &opts);
        let graph = p.graph.as_ref().unwrap();
        for t in graph
            .initializer
            .iter()
            .filter(|t| t.name.ends_with(".weight"))
        {
            assert_eq!(t.data_type, DataType::Float16 as i32, "{}", t.name);
        }
        let elem = |v: &ValueInfoProto| match v.r#type.as_ref().unwrap().value.as_ref() {
            Some(TypeValue::TensorType(t)) => t.elem_type,
            None => 0,
        };
        assert_eq!(elem(&graph.input[0]), DataType::Float as i32);
        assert_eq!(elem(&graph.output[0]), DataType::Float as i32);
        assert_eq!(count_ops(&p, "Cast"), 2);

        let path = export_to(&load(case), &opts, dir.path(), case);
        let expected = io_tensor(case, "eval_output");
        for runner in runners() {
            let got = run(runner, &path, &io_tensor(case, "input"));
            assert_close(
                &format!("{case} fp16 on {}", runner.name()),
                &expected,
                &got,
                Tolerance::F16,
            );
            // It really computed in f16: an f32 graph is within 1e-5.
            assert!(
                max_abs(&expected, &got) > 1e-5,
                "{case}: suspiciously exact for f16"
            );
        }
    }
}

#[test]
fn heads_and_in_graph_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    for (case, head) in [
        ("unet", Head::Sigmoid),
        ("unet-paper", Head::Softmax),
        ("unet-paper", Head::Argmax),
        ("attention-unet", Head::Logits),
    ] {
        let loaded = load(case);
        let opts = ExportOptions {
            head,
            normalize_in_graph: true,
            ..ExportOptions::default()
        };
        let path = export_to(
            &loaded,
            &opts,
            dir.path(),
            &format!("{case}-{}", head.as_str()),
        );
        // The graph takes pixels in [0, 1]: undo the fixture input's normalisation.
        let x = io_tensor(case, "input");
        let [_, c, h, w] = x.shape;
        let pre = &loaded.preprocessing;
        let pixels = Tensor4 {
            data: x
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let k = (i / (h * w)) % c;
                    v * pre.std[k] + pre.mean[k]
                })
                .collect(),
            shape: x.shape,
        };
        let expected = check::apply_head(head, &io_tensor(case, "eval_output"));
        for runner in runners() {
            let got = run(runner, &path, &pixels);
            assert_close(
                &format!("{case} {head:?} on {}", runner.name()),
                &expected,
                &got,
                Tolerance::F32,
            );
        }
        let p = proto(case, &opts);
        let meta = metadata(&p);
        assert_eq!(meta["unet.head"], head.as_str());
        assert_eq!(meta["unet.normalize_in_graph"], "true");
        // The documentation says what the output is: f32 labels for argmax.
        assert!(!p.doc_string.contains("int64 class"), "{}", p.doc_string);
        if head == Head::Argmax {
            assert!(p.doc_string.contains("class index per pixel, as f32"));
        }
        let graph = p.graph.unwrap();
        assert_eq!(graph.output[0].name, head.output_name());
        match graph.output[0]
            .r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
        {
            Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => assert_eq!(
                t.elem_type,
                tract_onnx::pb::tensor_proto::DataType::Float as i32
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn metadata_names_and_shapes() {
    let loaded = load("unet");
    let p = proto("unet", &ExportOptions::default());
    let meta = metadata(&p);
    assert_eq!(
        meta[CONFIG_KEY], loaded.metadata[CONFIG_KEY],
        "copied verbatim"
    );
    assert_eq!(meta[PREPROCESSING_KEY], loaded.metadata[PREPROCESSING_KEY]);
    assert_eq!(meta["unet.head"], "logits");
    assert_eq!(meta["unet.normalize_in_graph"], "false");
    assert_eq!(meta["unet.class_names"], r#"["foreground"]"#);
    assert_eq!(meta["unet.threshold"], "0.5");
    assert_eq!(meta["unet.size_multiple"], "8");
    assert_eq!(p.producer_name, "unet-export");
    assert!(
        p.doc_string.contains("U-Net (base width 4, depth 3"),
        "{}",
        p.doc_string
    );

    let graph = p.graph.as_ref().unwrap();
    // Initializers are exactly the state_dict minus the integer step counters.
    let inits: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    let state: HashSet<String> = loaded
        .model
        .state_dict()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(inits, state);
    let nodes: HashSet<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
    for name in [
        "encoder.0.conv.0",
        "encoder.0.conv.1",
        "encoder.1.pool",
        "decoder.0.up",
        "decoder.2.concat",
        "head",
    ] {
        assert!(nodes.contains(name), "{name}");
    }
    assert_eq!(dims(&graph.input[0]), ["batch", "3", "height", "width"]);
    assert_eq!(dims(&graph.output[0]), ["batch", "1", "height", "width"]);
    assert_eq!(graph.output[0].name, "logits");

    let fixed = ExportOptions {
        input: InputShape {
            batch: Some(1),
            spatial: Some((32, 48)),
        },
        ..ExportOptions::default()
    };
    let p = proto("unet", &fixed);
    let graph = p.graph.as_ref().unwrap();
    assert_eq!(dims(&graph.input[0]), ["1", "3", "32", "48"]);
    let info = |name: &str| dims(graph.value_info.iter().find(|v| v.name == name).unwrap());
    assert_eq!(info("encoder.1.pool"), ["1", "4", "16", "24"]);
    assert_eq!(info("bottleneck.conv.5"), ["1", "32", "4", "6"]);
    assert_eq!(info("decoder.0.up"), ["1", "16", "8", "12"]);
    assert!(graph
        .value_info
        .iter()
        .all(|v| !dims(v).contains(&"?".to_string())));

    let bad = ExportOptions {
        input: InputShape {
            batch: None,
            spatial: Some((30, 48)),
        },
        ..ExportOptions::default()
    };
    let err =
        lower::export(&loaded.model, &loaded.preprocessing, &loaded.metadata, &bad).unwrap_err();
    assert!(
        err.to_string().contains("nearest valid heights: 24 or 32"),
        "{err}"
    );
}

#[test]
fn check_passes_a_good_export_and_catches_a_flipped_weight() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load("unet");
    let good = export_to(&loaded, &ExportOptions::default(), dir.path(), "good");
    let report = check::check_model(
        &loaded.model,
        &loaded.preprocessing,
        &good,
        &CheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed(), "{report}");
    // Two sizes x (random, frames) per back end.
    assert!(report.backends.iter().all(|b| b.rows.len() == 4));

    // Flip the sign of one decoder weight in the file.
    let mut p = proto("unet", &ExportOptions::default());
    let t = p
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name == "decoder.2.conv.3.weight")
        .unwrap();
    for chunk in t.raw_data.chunks_exact_mut(4) {
        chunk[3] ^= 0x80;
    }
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, lower::encode(&p)).unwrap();
    let report = check::check_model(
        &loaded.model,
        &loaded.preprocessing,
        &bad,
        &CheckOptions::default(),
    )
    .unwrap();
    assert!(!report.passed());
    for b in &report.backends {
        for row in &b.rows {
            let stats = row.result.as_ref().unwrap();
            assert!(stats.mismatches > 0 && stats.max_abs > 1e-2, "{report}");
        }
    }
    assert!(report.to_string().contains("FAIL"), "{report}");

    // Saved golden outputs catch it too, without the weights.
    let golden_dir = dir.path().join("golden");
    golden::write_golden(&loaded.model, &loaded.preprocessing, &golden_dir, 5).unwrap();
    let opts = CheckOptions::default();
    assert!(golden::check_golden(&golden_dir, &good, &opts)
        .unwrap()
        .passed());
    assert!(!golden::check_golden(&golden_dir, &bad, &opts)
        .unwrap()
        .passed());
}

//! The `unet-export` binary: exit codes, messages, and no file left behind.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;

#[test]
fn export_runs_its_check_and_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("unet.onnx");
    let json = dir.path().join("parity.json");
    let o = unet_export(&[
        weights("unet").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
        "--fold-bn",
        "--head",
        "sigmoid",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("tract vs candle"), "{stdout}");
    assert!(stdout.contains("frames 72x80"), "{stdout}");
    assert!(stdout.contains("parity: PASS"), "{stdout}");
    assert!(out.is_file());
    assert_only(dir.path(), &["parity.json", "unet.onnx"]);
    let report = read_json(&json);
    assert_eq!(report["passed"], true);
    let tract = &report["backends"][0];
    assert_eq!(tract["backend"], "tract");
    let cases = tract["cases"].as_array().unwrap();
    // Two sizes, random inputs and synthetic frames each.
    assert_eq!(cases.len(), 4, "{report}");
    assert!(cases.iter().all(|c| c["max_abs"].as_f64().unwrap() < 1e-4
        && c["dice"].as_f64().unwrap() > 0.99
        && c["input_shape"][0] == 2));

    // The `check` subcommand on the written file, and on a damaged copy (exit 2).
    let o = unet_export(&[
        "check",
        weights("unet").to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    // Flip the sign of one decoder weight in the written file.
    use prost::Message;
    let mut proto =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    let weight = proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name.starts_with("decoder.2.conv.3"))
        .unwrap();
    for chunk in weight.raw_data.chunks_exact_mut(4) {
        chunk[3] ^= 0x80;
    }
    let bytes = proto.encode_to_vec();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, &bytes).unwrap();
    let o = unet_export(&[
        "check",
        weights("unet").to_str().unwrap(),
        bad.to_str().unwrap(),
        "--report",
        json.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).0.contains("parity: FAIL"));
    let report = read_json(&json);
    assert_eq!(report["passed"], false);
    let case = &report["backends"][0]["cases"][0];
    assert_eq!(case["passed"], false);
    assert!(case["mismatches"].as_u64().unwrap() > 0, "{report}");

    // Golden outputs written once, compared later without the weights.
    let golden = dir.path().join("golden");
    let o = unet_export(&[
        "golden",
        weights("unet").to_str().unwrap(),
        "-o",
        golden.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = unet_export(&[
        "check",
        "--golden",
        golden.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = unet_export(&[
        "check",
        "--golden",
        golden.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}

#[test]
fn a_failed_check_leaves_no_file() {
    // An impossible tolerance makes the check fail on a correct graph.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = unet_export(&[
        weights("unet-paper").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--fp16",
        "--atol",
        "0",
        "--rtol",
        "0",
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.contains("parity: FAIL"), "{stdout}");
    assert!(
        stderr.contains("m.onnx") && stderr.contains("not written"),
        "{stderr}"
    );
    assert_only(dir.path(), &[]);
}

/// Runs a failing export into an empty directory; returns stderr.
fn failing(args: &[&str], dir: &Path) -> String {
    let o = unet_export(args);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}\n{stdout}\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_only(dir, &[]);
    stderr
}

#[test]
fn bad_input_fails_with_the_file_named_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.onnx");
    let out = out_path.to_str().unwrap();
    let unet = weights("unet");
    let unet = unet.to_str().unwrap();

    // Weights that do not match the configuration.
    let e = failing(&[unet, "-o", out, "--preset", "unet-16"], dir.path());
    assert!(
        e.contains("weights.safetensors") && e.contains("encoder.0.conv.0.weight"),
        "{e}"
    );

    // A file without metadata and no --preset/--config.
    let inputs = tempfile::tempdir().unwrap();
    let bare = inputs.path().join("bare.safetensors");
    let bytes = std::fs::read(weights("unet")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    std::fs::write(
        &bare,
        safetensors::serialize(tensors, None::<HashMap<String, String>>).unwrap(),
    )
    .unwrap();
    let e = failing(&[bare.to_str().unwrap(), "-o", out], dir.path());
    assert!(
        e.contains("bare.safetensors") && e.contains("unet.config"),
        "{e}"
    );
    // ... which exports once the config is given.
    let config = inputs.path().join("config.json");
    let cfg = load("unet").model.config().to_json();
    std::fs::write(&config, cfg).unwrap();
    let o = unet_export(&[
        bare.to_str().unwrap(),
        "-o",
        out,
        "--config",
        config.to_str().unwrap(),
        "--no-check",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    std::fs::remove_file(&out_path).unwrap();

    // Opsets outside 13..=21.
    for opset in ["12", "22"] {
        let e = failing(&[unet, "-o", out, "--opset", opset], dir.path());
        assert!(
            e.contains(&format!("opset {opset} is not supported")) && e.contains("13 to 21"),
            "{e}"
        );
        assert!(e.contains("weights.safetensors"), "{e}");
    }

    // An output directory that does not exist.
    let missing = dir.path().join("no-such-dir").join("out.onnx");
    let e = failing(&[unet, "-o", missing.to_str().unwrap()], dir.path());
    assert!(e.contains("no-such-dir/out.onnx"), "{e}");
    assert!(!e.contains(".unet-export-"), "{e}");

    // A parity report that cannot be written: the error names it, and the
    // ONNX file is not written either.
    let report = dir.path().join("no-such-dir").join("parity.json");
    let e = failing(
        &[unet, "-o", out, "--report", report.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        e.contains("parity report") && e.contains("no-such-dir/parity.json"),
        "{e}"
    );
    assert!(!e.contains(".tmp-"), "{e}");

    // A file that is not safetensors.
    let notes = inputs.path().join("notes.txt");
    std::fs::write(&notes, "these are not weights\n").unwrap();
    let e = failing(&[notes.to_str().unwrap(), "-o", out], dir.path());
    assert!(
        e.contains("notes.txt") && e.contains("not a valid safetensors file"),
        "{e}"
    );

    // A shape the network does not accept.
    let e = failing(&[unet, "-o", out, "--shape", "1x3x30x48"], dir.path());
    assert!(e.contains("30x48") && e.contains("24 or 32"), "{e}");
}

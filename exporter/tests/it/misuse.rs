//! Exit codes and misuse of `unet-export`: 0 success, 1 usage or input error,
//! 2 parity drift; an output that is the input, damaged BatchNorm statistics
//! and preprocessing the runtime would refuse are refused before anything is
//! written.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use unet_models::config::PREPROCESSING_KEY;

use crate::common::*;

#[test]
fn help_and_version_exit_0_usage_errors_exit_1() {
    let o = unet_export(&["--help"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains("Exit status"), "{:?}", text(&o));
    let o = unet_export(&["check", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    let o = unet_export(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o).0,
        format!("unet-export {}\n", env!("CARGO_PKG_VERSION"))
    );

    // clap's own usage errors exit 2 unless mapped; 2 means drift here.
    let unet = weights("unet");
    let unet = unet.to_str().unwrap();
    for args in [
        vec!["--bogus"],
        vec![unet, "--bogus"],
        vec![],
        vec![unet, "--head", "tanh"],
        vec!["check"],
        vec!["golden", unet],
        vec!["annotate", "m.onnx", "-o", "a.onnx"],
    ] {
        let o = unet_export(&args);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    // An input error (a missing file) is 1 as well.
    let o = unet_export(&["check", "no-such.safetensors", "no-such.onnx"]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("no-such.safetensors"), "{:?}", text(&o));
}

#[test]
fn quiet_prints_nothing_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = unet_export(&[
        weights("unet").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o), (String::new(), String::new()));
    assert!(out.is_file());
    // Without it the report and the file written are printed.
    let o = unet_export(&[
        weights("unet").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(text(&o).0.contains("parity: PASS") && text(&o).0.contains("wrote"));
}

#[test]
fn the_output_never_replaces_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.safetensors");
    std::fs::copy(weights("unet"), &w).unwrap();
    let original = std::fs::read(&w).unwrap();
    std::os::unix::fs::symlink(&w, dir.path().join("link.safetensors")).unwrap();
    std::fs::hard_link(&w, dir.path().join("hard.safetensors")).unwrap();
    let spellings = [
        "w.safetensors",
        "./w.safetensors",
        "sub/../w.safetensors",
        "link.safetensors",
        "hard.safetensors",
    ];
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for out in spellings {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_unet-export"))
            .current_dir(dir.path())
            .args(["w.safetensors", "-o", out, "--no-check"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "-o {out}\n{stdout}\n{stderr}");
        assert!(stderr.contains("would replace the input"), "{stderr}");
        assert_eq!(std::fs::read(&w).unwrap(), original, "-o {out}");
    }
    // import and annotate refuse the same way.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_unet-export"))
        .current_dir(dir.path())
        .args([
            "import",
            "--from",
            "unet",
            "w.safetensors",
            "-o",
            "./w.safetensors",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert_eq!(std::fs::read(&w).unwrap(), original);
    let onnx = dir.path().join("m.onnx");
    std::fs::copy(fixtures().join("unet/model.onnx"), &onnx).unwrap();
    let o = unet_export(&[
        "annotate",
        onnx.to_str().unwrap(),
        "-o",
        onnx.to_str().unwrap(),
        "--mean",
        "0,0,0",
        "--std",
        "1,1,1",
    ]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
}

/// A copy of fixtures/unet's weights with tensors and metadata edited.
fn edited_weights(
    dst: &Path,
    edit_tensor: impl Fn(&str, &mut Vec<f32>),
    edit_metadata: impl Fn(&mut HashMap<String, String>),
) {
    let bytes = std::fs::read(weights("unet")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    edit_metadata(&mut metadata);
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut raw = view.data().to_vec();
        if view.dtype() == safetensors::Dtype::F32 {
            let mut v: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            edit_tensor(&name, &mut v);
            raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
        data.push((name, view.dtype(), view.shape().to_vec(), raw));
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

#[test]
fn a_negative_running_variance_is_refused_with_the_tensor_named() {
    let inputs = tempfile::tempdir().unwrap();
    let bad = inputs.path().join("bad.safetensors");
    edited_weights(
        &bad,
        |name, v| {
            if name == "decoder.1.conv.4.running_var" {
                v.iter_mut().for_each(|x| *x = -1.0);
            }
        },
        |_| {},
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    for args in [
        vec![bad.to_str().unwrap(), "-o", out.to_str().unwrap()],
        vec!["golden", bad.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ] {
        let o = unet_export(&args);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("bad.safetensors")
                && stderr.contains("decoder.1.conv.4.running_var")
                && stderr.contains("running variance -1"),
            "{stderr}"
        );
        assert!(!stdout.contains("PASS"), "{stdout}");
        assert_only(dir.path(), &[]);
    }
}

#[test]
fn preprocessing_the_runtime_refuses_is_refused_at_export() {
    let inputs = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    for (json, expect) in [
        (
            r#"{"mean":[0.5,0.5,0.5],"std":[0.2,0.0,0.2],"threshold":0.5,"class_names":["fg"],"channel_order":"rgb"}"#,
            "std must be finite and non-zero",
        ),
        (
            r#"{"mean":[0.5],"std":[0.2,0.2,0.2],"threshold":0.5,"class_names":["fg"],"channel_order":"rgb"}"#,
            "1 means and 3 stds for 3 input channels",
        ),
    ] {
        let bad = inputs.path().join("pre.safetensors");
        edited_weights(
            &bad,
            |_, _| {},
            |m| {
                m.insert(PREPROCESSING_KEY.into(), json.into());
            },
        );
        let o = unet_export(&[bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("pre.safetensors") && stderr.contains(expect),
            "{stderr}"
        );
        assert_only(dir.path(), &[]);
    }
}

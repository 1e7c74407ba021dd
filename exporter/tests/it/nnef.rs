//! NNEF archives (`unet-export nnef`) against PyTorch's reference outputs and
//! the ONNX file they were written from, on tract; the command's parity gate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use unet_exporter::check::{self, CheckOptions};
use unet_exporter::runner::{Runner, Tensor4};
use unet_exporter::{nnef, ExportOptions, Head};

use crate::common::*;

/// `dir/<name>.onnx` exported from fixture `case` with `opts`, and its NNEF
/// archive `dir/<name>.nnef.tar`.
fn onnx_and_nnef(
    case: &str,
    opts: &ExportOptions,
    dir: &Path,
    name: &str,
    size: Option<(usize, usize)>,
) -> (PathBuf, PathBuf) {
    let onnx = export_to(&load(case), opts, dir, name);
    let archive = dir.join(format!("{name}.nnef.tar"));
    let model = nnef::from_onnx(&onnx, size).unwrap();
    let mut file = std::fs::File::create(&archive).unwrap();
    nnef::write(&model, &mut file, &archive).unwrap();
    (onnx, archive)
}

#[test]
fn every_fixture_case_in_nnef_matches_pytorch_and_its_onnx_on_tract() {
    let dir = tempfile::tempdir().unwrap();
    for case in CASES {
        let input = io_tensor(case, "input");
        let [_, c, h, w] = input.shape;
        // Valid convolutions crop by amounts tract's symbols cannot follow:
        // that graph is written for its one input size.
        let fixed = (case == "unet-paper").then_some((w, h));
        let (onnx, archive) =
            onnx_and_nnef(case, &ExportOptions::default(), dir.path(), case, fixed);
        assert!(unet_runtime::is_nnef_archive(
            &std::fs::read(&archive).unwrap()
        ));
        let expected = io_tensor(case, "eval_output");
        let mut session = Runner::Tract.open(&archive).unwrap();
        assert_eq!(session.provider(), "tract");
        let got = session.run(&input).unwrap();
        let err = max_abs(&expected, &got);
        assert!(err <= GOLDEN_ATOL, "{case} NNEF vs PyTorch: max abs {err}");
        // The same graph through the same optimiser: summation order at most.
        let from_onnx = run(Runner::Tract, &onnx, &input);
        let err = max_abs(&from_onnx, &got);
        assert!(
            err <= 1e-5,
            "{case} NNEF vs its ONNX on tract: max abs {err}"
        );
        if fixed.is_some() {
            continue;
        }
        // Another frame size binds the symbolic N/H/W afresh.
        let small = Tensor4 {
            data: input.data[..c * (h / 2) * w].to_vec(),
            shape: [1, c, h / 2, w],
        };
        let from_onnx = run(Runner::Tract, &onnx, &small);
        let err = max_abs(&from_onnx, &session.run(&small).unwrap());
        assert!(
            err <= 1e-5,
            "{case} NNEF at {:?}: max abs {err}",
            small.shape
        );
    }
}

#[test]
fn nnef_carries_the_models_contract() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        head: Head::Sigmoid,
        fold_bn: true,
        ..ExportOptions::default()
    };
    let (onnx, archive) = onnx_and_nnef("unet", &opts, dir.path(), "m", None);
    let unet_keys = |m: &HashMap<String, String>| {
        let mut v: Vec<(String, String)> = m
            .iter()
            .filter(|(k, _)| k.starts_with("unet."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    };
    let expected = unet_keys(Runner::Tract.open(&onnx).unwrap().metadata());
    assert!(expected
        .iter()
        .any(|(k, v)| k == "unet.head" && v == "sigmoid"));
    assert!(expected.iter().any(|(k, _)| k == "unet.config"));
    assert_eq!(
        unet_keys(Runner::Tract.open(&archive).unwrap().metadata()),
        expected
    );
    let info = check::read_onnx_info(&archive).unwrap();
    assert!(info.nnef && info.head == Head::Sigmoid);
    // Written twice, the archive is the same bytes (fixed timestamps).
    let again = dir.path().join("again.nnef.tar");
    let mut file = std::fs::File::create(&again).unwrap();
    nnef::write(&nnef::from_onnx(&onnx, None).unwrap(), &mut file, &again).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&archive).unwrap()
    );

    // The gate against the ONNX file: tract only, every case compared.
    let report =
        check::check_against(&onnx, Runner::Tract, &archive, &CheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.backends.len(), 1, "{report}");
    assert!(report.backends[0].rows.len() >= 2, "{report}");
}

#[test]
fn nnef_command_gates_on_candle_the_onnx_file_or_goldens() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = export_to(
        &load("attention-unet"),
        &ExportOptions::default(),
        dir.path(),
        "m",
    );
    let onnx_s = onnx.to_str().unwrap();
    let weights = weights("attention-unet");
    let weights_s = weights.to_str().unwrap();

    // Default output name; the ONNX file on tract is the reference.
    let o = unet_export(&["nnef", onnx_s]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("parity: PASS") && stdout.contains("on tract"),
        "{stdout}"
    );
    assert_only(dir.path(), &["m.onnx", "m.nnef.tar"]);
    // The mode `File::create` gives (m.onnx), not the temporary file's 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&dir.path().join("m.nnef.tar")), mode(&onnx));
        let exported = dir.path().join("e.onnx");
        let o = unet_export(&[weights_s, "-o", exported.to_str().unwrap(), "--no-check"]);
        assert!(o.status.success(), "{}", text(&o).1);
        assert_eq!(mode(&exported), mode(&onnx));
        std::fs::remove_file(&exported).unwrap();
    }

    // Against the candle forward pass, as the export's own check.
    let out = dir.path().join("w.nnef.tar");
    let o = unet_export(&[
        "nnef",
        onnx_s,
        "--weights",
        weights_s,
        "-o",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("candle") && stdout.contains("parity: PASS"),
        "{stdout}"
    );

    // And `check` takes the archive in place of the ONNX file.
    let o = unet_export(&["check", weights_s, out.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");

    // Goldens written by `unet-export golden`.
    let golden = dir.path().join("golden");
    let o = unet_export(&["golden", weights_s, "-o", golden.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    let out = dir.path().join("g.nnef.tar");
    let o = unet_export(&[
        "nnef",
        onnx_s,
        "--golden",
        golden.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).0);
    assert!(out.is_file());

    // A gate it cannot pass (zero tolerance against candle): exit 2, nothing written.
    let out = dir.path().join("drift.nnef.tar");
    let o = unet_export(&[
        "nnef",
        onnx_s,
        "--weights",
        weights_s,
        "--atol",
        "0",
        "--rtol",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("not written"), "{stderr}");
    assert_only(
        dir.path(),
        &["m.onnx", "m.nnef.tar", "w.nnef.tar", "g.nnef.tar", "golden"],
    );

    // Not an ONNX file: exit 1, the file named.
    let o = unet_export(&["nnef", weights_s, "-o", out.to_str().unwrap()]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("weights.safetensors"), "{stderr}");
    assert!(!out.exists());

    // Valid convolutions: the symbolic archive does not read back, and the
    // message says what does (a fixed size), before any parity figure.
    let paper = export_to(
        &load("unet-paper"),
        &ExportOptions::default(),
        dir.path(),
        "paper",
    );
    let out = dir.path().join("paper.nnef.tar");
    let o = unet_export(&["nnef", paper.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--size WxH"), "{stderr}");
    assert!(!out.exists());
    let [.., h, w] = io_tensor("unet-paper", "input").shape;
    let size = format!("{w}x{h}");
    let o = unet_export(&[
        "nnef",
        paper.to_str().unwrap(),
        "--size",
        &size,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
}

//! The candle U-Net against golden outputs of an independent PyTorch
//! implementation (`fixtures/generate.py`; layout and cases in
//! `fixtures/README.md`). Regenerating the fixtures is an explicit command,
//! never part of this test.
//!
//! Every case loads `fixtures/<case>/weights.safetensors` through the public
//! loader with the config from the file's own metadata, so the fixtures also
//! pin the on-disk format (names, dtypes, metadata JSON).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use unet_models::candle_core::{DType, Device, Tensor};
use unet_models::config::{CONFIG_KEY, PREPROCESSING_KEY};
use unet_models::io::{self, ConfigSource, LoadedModel};
use unet_models::{layers, Graph, ParamKind, Preprocessing, UNetConfig, PRESET_NAMES};

/// Max absolute error allowed between candle and PyTorch (f32).
const GOLDEN_ATOL: f32 = 1e-4;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

fn load_io(case: &str) -> HashMap<String, Tensor> {
    let path = fixture(&format!("{case}/io.safetensors"));
    unet_models::candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_model(case: &str) -> LoadedModel {
    let path = fixture(&format!("{case}/weights.safetensors"));
    io::load(&path, ConfigSource::Metadata, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get<'a>(io: &'a HashMap<String, Tensor>, case: &str, key: &str) -> &'a Tensor {
    io.get(key)
        .unwrap_or_else(|| panic!("{case}/io.safetensors has no `{key}`"))
}

/// Max |a - b| after checking that the shapes agree.
fn max_abs_diff(what: &str, got: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    (got - expected)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    let err = max_abs_diff(what, got, expected);
    // Shown with `--nocapture`: how close, not only that it passed.
    eprintln!("{what}: max abs error {err:.2e}");
    assert!(
        err <= GOLDEN_ATOL,
        "{what}: max abs error {err:e} > GOLDEN_ATOL {GOLDEN_ATOL:e}"
    );
}

/// PyTorch (fixtures/generate.py, `write_case`):
/// ```python
/// model = UNet(cfg); randomise(model, seed); model.eval()
/// eval_output = model(input)
/// ```
fn check_eval(case: &str) {
    let loaded = load_model(case);
    let io = load_io(case);
    let y = loaded
        .model
        .forward(get(&io, case, "input"))
        .unwrap_or_else(|e| panic!("{case}: eval forward: {e}"));
    assert_close(
        &format!("{case} eval_output"),
        &y,
        get(&io, case, "eval_output"),
    );
}

/// PyTorch (fixtures/generate.py, `write_case`), on a fresh copy of the weights:
/// ```python
/// train_model.load_state_dict(sd); train_model.train()
/// train_output = train_model(input)
/// train_state[f"{bn}.running_mean" | ".running_var" | ".num_batches_tracked"] = buffers after it
/// ```
fn check_train(case: &str) {
    // A fresh model: the eval test must not have touched its running stats.
    let loaded = load_model(case);
    let io = load_io(case);
    let model = &loaded.model;
    // `state_dict` tensors share storage with the model's variables: copy them.
    let before: HashMap<String, Tensor> = model
        .state_dict()
        .into_iter()
        .map(|(k, v)| (k, v.copy().unwrap()))
        .collect();
    let y = model
        .forward_t(get(&io, case, "input"), true)
        .unwrap_or_else(|e| panic!("{case}: train forward: {e}"));
    assert_close(
        &format!("{case} train_output"),
        &y,
        get(&io, case, "train_output"),
    );

    let after: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
    let mut checked = 0;
    for spec in model.graph().params() {
        let got = &after[&spec.name];
        match spec.kind {
            ParamKind::RunningMean | ParamKind::RunningVar => {
                let key = format!("train_state.{}", spec.name);
                let expected = get(&io, case, &key);
                // The update must be visible, not only the final values close.
                assert!(
                    max_abs_diff(&key, &before[&spec.name], expected) > GOLDEN_ATOL,
                    "{key}: PyTorch's one train step left it unchanged"
                );
                assert_close(&format!("{case} {key}"), got, expected);
                checked += 1;
            }
            ParamKind::NumBatchesTracked => {
                let key = format!("train_state.{}", spec.name);
                let expected = get(&io, case, &key);
                let scalar = |t: &Tensor| {
                    t.to_dtype(DType::I64)
                        .and_then(|t| t.to_scalar::<i64>())
                        .unwrap_or_else(|e| panic!("{case} {key}: {e}"))
                };
                let want = scalar(expected);
                assert_eq!(scalar(got), want, "{case} {key}");
                assert_eq!(scalar(&before[&spec.name]) + 1, want, "{case} {key}");
                checked += 1;
            }
            // Trainable parameters are untouched by a forward pass.
            ParamKind::Weight | ParamKind::Bias => {
                assert_eq!(
                    max_abs_diff(&spec.name, got, &before[&spec.name]),
                    0.0,
                    "{case} {}",
                    spec.name
                );
            }
        }
    }
    let expected_count = io.keys().filter(|k| k.starts_with("train_state.")).count();
    assert_eq!(
        checked, expected_count,
        "{case}: BatchNorm buffers compared"
    );
}

/// The metadata is exactly what serde writes, and it round-trips.
fn check_metadata(case: &str) {
    let loaded = load_model(case);
    let cfg = loaded.model.config();
    assert_eq!(loaded.metadata[CONFIG_KEY], cfg.to_json(), "{case}");
    assert_eq!(
        loaded.preprocessing,
        Preprocessing::default_for(cfg),
        "{case}"
    );
    assert_eq!(
        loaded.metadata[PREPROCESSING_KEY],
        loaded.preprocessing.to_json(),
        "{case}"
    );
    assert_eq!(
        cfg.dropout, 0.0,
        "{case}: fixtures cannot match random dropout masks"
    );
}

macro_rules! golden_case {
    ($module:ident, $case:literal) => {
        mod $module {
            #[test]
            fn eval_matches_pytorch() {
                super::check_eval($case);
            }
            #[test]
            fn train_matches_pytorch() {
                super::check_train($case);
            }
            #[test]
            fn metadata_is_serde_json() {
                super::check_metadata($case);
            }
        }
    };
}

golden_case!(unet, "unet");
golden_case!(unet_bilinear, "unet-bilinear");
golden_case!(unet_paper, "unet-paper");
golden_case!(attention_unet, "attention-unet");

/// The fixture configs are the ones the README documents (base 4, depth 3).
#[test]
fn fixture_configs() {
    let cfg = |case: &str| load_model(case).model.config().clone();
    let tiny = UNetConfig {
        base_width: 4,
        depth: 3,
        ..UNetConfig::preset("unet").unwrap()
    };
    assert_eq!(cfg("unet"), tiny);
    assert_eq!(
        cfg("unet-bilinear"),
        UNetConfig {
            upsampling: unet_models::Upsampling::Bilinear,
            ..tiny.clone()
        }
    );
    assert_eq!(
        cfg("attention-unet"),
        UNetConfig {
            attention: true,
            ..tiny.clone()
        }
    );
    // The paper's architecture (valid, no BN, 1 -> 2) at reduced width and depth.
    assert_eq!(
        cfg("unet-paper"),
        UNetConfig {
            base_width: 4,
            depth: 3,
            dropout: 0.0,
            ..UNetConfig::preset("unet-paper").unwrap()
        }
    );
}

/// PyTorch (fixtures/generate.py, `write_bilinear`):
/// ```python
/// x = torch.randn((2, 3, 5, 7), generator=torch.Generator().manual_seed(7))
/// F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True | False)
/// ```
#[test]
fn bilinear_upsample_matches_pytorch() {
    let io = load_io("bilinear");
    let x = get(&io, "bilinear", "input");
    for (align_corners, key) in [(true, "align_corners_true"), (false, "align_corners_false")] {
        let y = layers::upsample_bilinear2x(x, align_corners).unwrap();
        assert_close(key, &y, get(&io, "bilinear", key));
    }
}

/// PyTorch (fixtures/generate.py):
/// ```python
/// {name: sum(p.numel() for p in UNet(preset(name)).parameters()) for name in PRESET_NAMES}
/// ```
#[test]
fn parameter_counts_match_pytorch() {
    let path = fixture("param_counts.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let counts: BTreeMap<String, usize> = serde_json::from_str(&text).unwrap();
    let mut names: Vec<&str> = counts.keys().map(String::as_str).collect();
    let mut presets = PRESET_NAMES.to_vec();
    names.sort_unstable();
    presets.sort_unstable();
    assert_eq!(
        names, presets,
        "param_counts.json covers exactly PRESET_NAMES"
    );
    for name in PRESET_NAMES {
        let graph = Graph::build(&UNetConfig::preset(name).unwrap()).unwrap();
        assert_eq!(graph.num_parameters(), counts[*name], "{name}");
    }
    // The common PyTorch U-Net (3 -> 1, base 64): ~31.0 M.
    assert_eq!(counts["unet"], 31_037_633);
}

/// milesial/Pytorch-UNet names onto ours (the table in fixtures/README.md).
/// The exporter owns the product version of this map; this copy only proves
/// the candle model computes milesial's architecture.
fn milesial_to_ours(name: &str) -> String {
    let (head, rest) = name.split_once('.').unwrap();
    let tail = |skip: usize| rest.splitn(skip + 1, '.').last().unwrap().to_string();
    match head {
        // inc.double_conv.K.x
        "inc" => format!("encoder.0.conv.{}", tail(1)),
        // downI.maxpool_conv.1.double_conv.K.x
        "down4" => format!("bottleneck.conv.{}", tail(3)),
        h if h.starts_with("down") => format!("encoder.{}.conv.{}", &h[4..], tail(3)),
        // upI.up.x | upI.conv.double_conv.K.x
        h if h.starts_with("up") => {
            let j: usize = h[2..].parse::<usize>().unwrap() - 1;
            if rest.starts_with("up.") {
                format!("decoder.{j}.up.{}", tail(1))
            } else {
                format!("decoder.{j}.conv.{}", tail(2))
            }
        }
        // outc.conv.x
        "outc" => format!("head.{}", tail(1)),
        _ => panic!("unexpected milesial tensor {name}"),
    }
}

/// PyTorch (fixtures/generate.py, `write_milesial`):
/// ```python
/// model = MilesialUNet(3, 2, bilinear=..., base=2); randomise(model, seed); model.eval()
/// eval_output = model(input)
/// ```
fn check_milesial(case: &str, upsampling: unet_models::Upsampling) {
    let path = fixture(&format!("{case}/state_dict.safetensors"));
    assert!(
        !io::read_metadata(&path)
            .unwrap()
            .keys()
            .any(|k| k.starts_with("unet.")),
        "{case}: a milesial state_dict carries no unet.* metadata"
    );
    let tensors = unet_models::candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (milesial_to_ours(&k), v))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("renamed.safetensors");
    unet_models::candle_core::safetensors::save(&renamed, &ours).unwrap();
    // milesial's architecture at base 2 (fixtures/README.md).
    let cfg = UNetConfig {
        in_channels: 3,
        out_channels: 2,
        base_width: 2,
        depth: 4,
        upsampling,
        ..UNetConfig::preset("unet").unwrap()
    };
    let loaded = io::load(&ours, ConfigSource::Explicit(cfg), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let io = load_io(case);
    let y = loaded.model.forward(get(&io, case, "input")).unwrap();
    assert_close(
        &format!("{case} eval_output"),
        &y,
        get(&io, case, "eval_output"),
    );
}

#[test]
fn milesial_transposed_matches_pytorch() {
    check_milesial("milesial-transposed", unet_models::Upsampling::Transposed);
}

#[test]
fn milesial_bilinear_matches_pytorch() {
    check_milesial("milesial-bilinear", unet_models::Upsampling::Bilinear);
}

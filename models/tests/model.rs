//! Config, size rules, dropout, and the safetensors load path with its errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, seeded};
use unet_models::io::{self, ConfigSource};
use unet_models::{Graph, ModelError, Preprocessing, UNet, UNetConfig, PRESET_NAMES};

fn tiny() -> UNetConfig {
    UNetConfig {
        base_width: 4,
        depth: 2,
        ..UNetConfig::preset("attention-unet").unwrap()
    }
}

fn saved_tiny(dir: &Path) -> (UNet, std::path::PathBuf) {
    let model = UNet::new(&tiny(), &Device::Cpu, 5).unwrap();
    let path = dir.join("tiny.safetensors");
    let pre = Preprocessing::default_for(model.config());
    io::save(&model, &pre, &HashMap::new(), &path).unwrap();
    (model, path)
}

/// Rewrites `src`'s tensors through `edit` into a new file with the same metadata.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>, &mut HashMap<String, String>),
) {
    let mut meta = io::read_metadata(src).unwrap();
    let mut tensors: Vec<(String, Tensor)> = candle_core::safetensors::load(src, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut tensors, &mut meta);
    let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(dst, bytes).unwrap();
}

fn load_err(path: &Path) -> ModelError {
    match io::load(path, ConfigSource::Metadata, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    }
}

#[test]
fn config_json_round_trips_for_every_preset() {
    for name in PRESET_NAMES {
        let cfg = UNetConfig::preset(name).unwrap();
        assert_eq!(
            UNetConfig::from_json(&cfg.to_json()).unwrap(),
            cfg,
            "{name}"
        );
    }
    let json = r#"{"in_channels":3,"out_channels":1,"base_width":64,"depth":4,"padding":"valid","batch_norm":false,"upsampling":"bilinear","dropout":0.5,"attention":true}"#;
    let cfg = UNetConfig::from_json(json).unwrap();
    assert_eq!(cfg.to_json(), json);
}

#[test]
fn bad_configs_are_refused() {
    assert!(UNetConfig::from_json(r#"{"in_channels":3,"out_channels":1,"widht":8}"#).is_err());
    assert!(UNetConfig::from_json(r#"{"in_channels":0,"out_channels":1}"#).is_err());
    assert!(UNetConfig::from_json(r#"{"in_channels":3,"out_channels":1,"dropout":1.5}"#).is_err());
    let err = UNetConfig::preset("unet-48").unwrap_err().to_string();
    assert!(
        err.contains("unet-48") && err.contains("attention-unet-16"),
        "{err}"
    );
}

#[test]
fn paper_preset_maps_572_to_388() {
    let graph = Graph::build(&UNetConfig::preset("unet-paper").unwrap()).unwrap();
    assert_eq!(graph.output_size(572, 572).unwrap(), (388, 388));
    // 23 convolutional layers, as the paper counts them.
    let convs = graph
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                unet_models::Op::Conv2d { .. } | unet_models::Op::ConvTranspose2x2 { .. }
            )
        })
        .count();
    assert_eq!(convs, 23, "18 3x3 convs, 4 up-convs and the 1x1 head");
}

#[test]
fn invalid_sizes_name_the_nearest_valid_ones() {
    let graph = Graph::build(&UNetConfig::preset("unet").unwrap()).unwrap();
    let err = graph.output_size(250, 256).unwrap_err().to_string();
    assert!(err.contains("240 or 256"), "{err}");
    assert!(err.contains("divisible by 16"), "{err}");
    let paper = Graph::build(&UNetConfig::preset("unet-paper").unwrap()).unwrap();
    let err = paper.output_size(570, 572).unwrap_err().to_string();
    assert!(err.contains("556 or 572"), "{err}");
}

#[test]
fn forward_rejects_wrong_channels_and_sizes() {
    let model = UNet::new(&tiny(), &Device::Cpu, 0).unwrap();
    let x = Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&x),
        Err(ModelError::InputShape { .. })
    ));
    let x = Tensor::zeros((1, 3, 10, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&x),
        Err(ModelError::Spec(
            unet_models::unet_spec::SpecError::InvalidInputSize { .. }
        ))
    ));
    let x = Tensor::zeros((3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&x),
        Err(ModelError::InputShape { .. })
    ));
}

#[test]
fn dropout_is_active_only_in_training_and_reproducible() {
    let cfg = UNetConfig {
        dropout: 0.5,
        batch_norm: false,
        ..tiny()
    };
    let model = UNet::new(&cfg, &Device::Cpu, 1).unwrap();
    let x = seeded(&[2, 3, 16, 16], 4);
    let eval1 = model.forward(&x).unwrap();
    let eval2 = model.forward(&x).unwrap();
    assert_eq!(max_abs_diff(&eval1, &eval2), 0.0);
    let train1 = model.forward_t(&x, true).unwrap();
    let train2 = model.forward_t(&x, true).unwrap();
    assert!(
        max_abs_diff(&train1, &train2) > 1e-3,
        "masks must differ per step"
    );
    model.set_dropout_step(0);
    let replay = model.forward_t(&x, true).unwrap();
    assert_eq!(max_abs_diff(&train1, &replay), 0.0, "same step, same mask");

    // The mask keeps about 1-p of the activations and rescales by 1/(1-p).
    let ones = Tensor::ones((1, 1, 100, 100), DType::F32, &Device::Cpu).unwrap();
    let keep: Vec<f32> = (0..10_000).map(|i| (i % 2) as f32).collect();
    let y = unet_models::layers::dropout_with_mask(&ones, &keep, 0.5).unwrap();
    assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 10_000.0);
}

#[test]
fn train_forward_updates_running_statistics() {
    let model = UNet::new(&tiny(), &Device::Cpu, 2).unwrap();
    let x = ((seeded(&[2, 3, 8, 8], 3) * 3.0).unwrap() + 1.0).unwrap();
    model.forward_t(&x, true).unwrap();
    let sd: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
    // The first BN sees conv(x) directly: its running mean moved 10% towards the batch mean.
    let conv = unet_models::layers::conv2d(&x, &sd["encoder.0.conv.0.weight"], None, 1).unwrap();
    let batch_mean = conv
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap()
        .flatten_all()
        .unwrap();
    let expected = (batch_mean * 0.1).unwrap();
    assert!(max_abs_diff(&sd["encoder.0.conv.1.running_mean"], &expected) < 1e-5);
    assert_eq!(
        sd["encoder.0.conv.1.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
}

#[test]
fn save_load_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (model, path) = saved_tiny(dir.path());
    let loaded = io::load(&path, ConfigSource::Metadata, &Device::Cpu).unwrap();
    assert_eq!(loaded.model.config(), model.config());
    assert_eq!(
        loaded.preprocessing,
        Preprocessing::default_for(model.config())
    );
    for ((n1, t1), (n2, t2)) in model
        .state_dict()
        .iter()
        .zip(loaded.model.state_dict().iter())
    {
        assert_eq!(n1, n2);
        let d = t1
            .to_dtype(DType::F64)
            .unwrap()
            .sub(&t2.to_dtype(DType::F64).unwrap())
            .unwrap();
        assert_eq!(
            d.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            0.0,
            "{n1}"
        );
    }
    let x = seeded(&[1, 3, 8, 12], 5);
    let d = max_abs_diff(
        &model.forward(&x).unwrap(),
        &loaded.model.forward(&x).unwrap(),
    );
    assert_eq!(d, 0.0);
    // Only the final file is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn every_bad_file_gets_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, good) = saved_tiny(dir.path());
    let p = |name: &str| dir.path().join(name);

    let err = load_err(&p("absent.safetensors"));
    assert!(matches!(err, ModelError::Io { .. }) && err.to_string().contains("absent.safetensors"));

    std::fs::write(
        p("foreign.safetensors"),
        b"\x08\x01\x12\x04onnx this is not safetensors",
    )
    .unwrap();
    let err = load_err(&p("foreign.safetensors"));
    assert!(matches!(err, ModelError::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("foreign.safetensors"));

    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(p("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_err(&p("truncated.safetensors")),
        ModelError::NotSafetensors { .. }
    ));

    rewrite(&good, &p("nometa.safetensors"), |_, m| m.clear());
    let err = load_err(&p("nometa.safetensors"));
    assert!(matches!(err, ModelError::MissingMetadata { .. }), "{err}");
    // ...which an explicit config fixes.
    io::load(
        &p("nometa.safetensors"),
        ConfigSource::Explicit(tiny()),
        &Device::Cpu,
    )
    .unwrap();

    rewrite(&good, &p("badmeta.safetensors"), |_, m| {
        m.insert("unet.config".into(), "{\"in_channels\": 3".into());
    });
    assert!(matches!(
        load_err(&p("badmeta.safetensors")),
        ModelError::BadMetadata { .. }
    ));

    rewrite(&good, &p("missing.safetensors"), |t, _| {
        t.retain(|(n, _)| n != "decoder.1.attention.psi.0.weight")
    });
    let err = load_err(&p("missing.safetensors"));
    assert!(
        err.to_string().contains("decoder.1.attention.psi.0.weight"),
        "{err}"
    );
    assert!(matches!(err, ModelError::MissingTensor { .. }));

    rewrite(&good, &p("extra.safetensors"), |t, _| {
        t.push((
            "decoder.9.up.weight".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        ))
    });
    let err = load_err(&p("extra.safetensors"));
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { name, .. } if name == "decoder.9.up.weight"),
        "{err}"
    );

    rewrite(&good, &p("shape.safetensors"), |t, _| {
        for (n, v) in t.iter_mut() {
            if n == "head.weight" {
                *v = Tensor::zeros((2, 4, 1, 1), DType::F32, &Device::Cpu).unwrap();
            }
        }
    });
    let err = load_err(&p("shape.safetensors"));
    assert!(
        matches!(&err, ModelError::ShapeMismatch { name, expected, got, .. }
        if name == "head.weight" && expected == &[1, 4, 1, 1] && got == &[2, 4, 1, 1]),
        "{err}"
    );

    rewrite(&good, &p("dtype.safetensors"), |t, _| {
        for (n, v) in t.iter_mut() {
            if n == "head.bias" {
                *v = v.to_dtype(DType::F16).unwrap();
            }
        }
    });
    let err = load_err(&p("dtype.safetensors"));
    assert!(
        matches!(&err, ModelError::DtypeMismatch { name, .. } if name == "head.bias"),
        "{err}"
    );

    rewrite(&good, &p("nan.safetensors"), |t, _| {
        for (n, v) in t.iter_mut() {
            if n == "encoder.1.conv.1.running_var" {
                let mut data: Vec<f32> = v.to_vec1().unwrap();
                data[2] = f32::NAN;
                *v = Tensor::new(data, &Device::Cpu).unwrap();
            }
        }
    });
    let err = load_err(&p("nan.safetensors"));
    assert!(
        matches!(&err, ModelError::NonFinite { name, index: 2, .. } if name == "encoder.1.conv.1.running_var"),
        "{err}"
    );
}

#[test]
fn saving_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = UNet::new(&tiny(), &Device::Cpu, 0).unwrap();
    let path = dir.path().join("no/such/dir/model.safetensors");
    let err = io::save(
        &model,
        &Preprocessing::default_for(&tiny()),
        &HashMap::new(),
        &path,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no/such/dir"), "{err}");
}

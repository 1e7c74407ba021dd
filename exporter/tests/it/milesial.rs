//! milesial/Pytorch-UNet checkpoints: name map, config inference, export.

use unet_exporter::ExportOptions;
use unet_models::candle_core::{Device, Tensor};
use unet_models::{milesial, UNetConfig, Upsampling};

use crate::common::*;

#[test]
fn milesial_checkpoints_load_export_and_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    for (case, preset, upsampling) in [
        ("milesial-transposed", "unet", Upsampling::Transposed),
        ("milesial-bilinear", "unet-bilinear", Upsampling::Bilinear),
    ] {
        let path = fixtures().join(case).join("state_dict.safetensors");
        let loaded = milesial::load(&path, &Device::Cpu).unwrap();
        // milesial's UNet(3, 2, bilinear) at base width 2 is exactly our preset.
        let expected_cfg = UNetConfig {
            base_width: 2,
            out_channels: 2,
            ..UNetConfig::preset(preset).unwrap()
        };
        assert_eq!(loaded.model.config(), &expected_cfg, "{case}");
        assert_eq!(loaded.model.config().upsampling, upsampling);
        assert_eq!(loaded.metadata[milesial::SOURCE_KEY], milesial::SOURCE);
        assert_eq!(loaded.preprocessing.mean, vec![0.0; 3]);
        assert_eq!(loaded.preprocessing.std, vec![1.0; 3]);

        let input = io_tensor(case, "input");
        let expected = io_tensor(case, "eval_output");
        let x = Tensor::from_slice(&input.data, input.shape.as_slice(), &Device::Cpu).unwrap();
        let y: Vec<f32> = loaded
            .model
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let candle_err = y
            .iter()
            .zip(&expected.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(candle_err <= GOLDEN_ATOL, "{case}: candle {candle_err}");

        let onnx = export_to(&loaded, &ExportOptions::default(), dir.path(), case);
        for runner in runners() {
            let got = run(runner, &onnx, &input);
            let err = max_abs(&expected, &got);
            assert!(err <= GOLDEN_ATOL, "{case} on {}: {err}", runner.name());
        }
    }
}

#[test]
fn our_own_files_are_not_milesial_checkpoints() {
    let err = milesial::load(&weights("unet"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("weights.safetensors"), "{err}");
    assert!(err.contains("inc.double_conv.0.weight"), "{err}");
}

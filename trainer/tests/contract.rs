//! The contract between training and the device: the tensor the trainer feeds
//! the network equals the one the runtime feeds the exported model for the
//! same frame, and geometry and provenance travel from the safetensors file
//! through ONNX to the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use prost::Message;
use unet_models::candle_core::Device;
use unet_models::{Preprocessing, UNet, UNetConfig};
use unet_runtime::{Backend, Segmenter};
use unet_spec::{keys, InputGeometry, ModelInfo};
use unet_trainer::augment::prepare;
use unet_trainer::data::{load_pair, MemorySource, Pair, RawSample};
use unet_trainer::train::TrainOptions;

/// A textured frame with sharp edges: aliasing and filter differences show.
fn frame(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let check = ((x / 3 + y / 5) % 2) as u8 * 120;
        Rgb([
            (x * 255 / w) as u8,
            check.wrapping_add((y * 7) as u8),
            ((x * y) % 251) as u8,
        ])
    })
}

/// Exports `model` with `metadata` to `dir/model.onnx`.
fn export(
    dir: &std::path::Path,
    model: &UNet,
    pre: &Preprocessing,
    metadata: &HashMap<String, String>,
) -> std::path::PathBuf {
    let proto = unet_exporter::export(model, pre, metadata, &Default::default()).unwrap();
    let path = dir.join("model.onnx");
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    path
}

#[test]
fn trainer_and_runtime_feed_the_network_the_same_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // 200x150 frame, trained at 64x48: a downscale by about 3.1 that a
    // point-sampling resize would alias.
    let (image_path, mask_path) = (dir.path().join("f.png"), dir.path().join("m.png"));
    frame(200, 150).save(&image_path).unwrap();
    image::GrayImage::new(200, 150).save(&mask_path).unwrap();
    let pair = Pair {
        stem: "f".into(),
        image: image_path.clone(),
        mask: mask_path,
    };
    let raw: RawSample = load_pair(&pair, 3, 1).unwrap();
    let cfg = UNetConfig {
        base_width: 4,
        depth: 2,
        ..UNetConfig::preset("unet").unwrap()
    };
    let mut opts = TrainOptions::defaults_for(cfg.clone());
    opts.width = 64;
    opts.height = 48;
    let pre = Preprocessing::default_for(&cfg);
    let trained = prepare(&raw, 64, 48, None, &pre.mean, &pre.std);

    let model = UNet::new(&cfg, &Device::Cpu, 1).unwrap();
    let metadata = HashMap::from([(
        keys::INPUT_GEOMETRY.to_string(),
        unet_trainer::provenance::input_geometry(&opts).to_json(),
    )]);
    let onnx = export(dir.path(), &model, &pre, &metadata);
    let segmenter = Segmenter::from_file(&onnx, Backend::Tract).unwrap();
    let decoded = image::open(&image_path).unwrap();
    let fed = segmenter.prepare(&decoded).unwrap();
    assert_eq!((fed.channels, fed.width, fed.height), (3, 64, 48));
    let worst = fed
        .data
        .iter()
        .zip(&trained.image)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "trainer and runtime differ by {worst}");
    // And the mask comes back at the frame's own size.
    let mut segmenter = segmenter;
    let seg = segmenter.segment(&decoded).unwrap();
    assert_eq!((seg.width, seg.height), (200, 150));
}

#[test]
fn geometry_and_provenance_travel_from_safetensors_through_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = UNetConfig {
        base_width: 4,
        depth: 2,
        ..UNetConfig::preset("unet").unwrap()
    };
    let mut opts = TrainOptions::defaults_for(cfg.clone());
    opts.width = 32;
    opts.height = 16;
    opts.class_names = vec!["polyp".into()];
    let samples: Vec<RawSample> = (0..3)
        .map(|_| RawSample {
            width: 8,
            height: 8,
            channels: 3,
            image: vec![0.5; 192],
            mask: vec![0; 64],
        })
        .collect();
    let source = Arc::new(MemorySource { samples });
    let contract = unet_trainer::provenance::model_metadata(&opts, source.as_ref(), &[0, 2]);
    let model = UNet::new(&cfg, &Device::Cpu, 1).unwrap();
    let pre = Preprocessing::default_for(&cfg);
    let weights = dir.path().join("best.safetensors");
    unet_models::io::save(&model, &pre, &contract, &weights).unwrap();
    let read_back = unet_models::io::read_metadata(&weights).unwrap();
    let onnx = export(dir.path(), &model, &pre, &read_back);

    let segmenter = Segmenter::from_file(&onnx, Backend::Tract).unwrap();
    let info: &ModelInfo = segmenter.info();
    let g: InputGeometry = info.input_geometry.expect("geometry");
    assert_eq!((g.width, g.height, g.size_multiple), (32, 16, 4));
    let p = info.provenance.as_ref().expect("provenance");
    assert_eq!(p.imgsz, [16, 32]);
    assert_eq!(p.names.get(&0).map(String::as_str), Some("polyp"));
    assert_eq!(p.data_files, 2);
    assert_eq!(
        p.data_fingerprint,
        unet_spec::provenance::fingerprint(["synthetic_0000", "synthetic_0002"])
    );
    assert!(p.tool.starts_with("unet-train "), "{}", p.tool);
    assert!(p.date.ends_with('Z') && p.date.len() == 20, "{}", p.date);
    // Ultralytics' own keys are there for its readers.
    let meta = segmenter.session().metadata();
    assert_eq!(meta[keys::IMGSZ], "[16,32]");
    assert_eq!(meta[keys::NAMES], r#"{"0":"polyp"}"#);
    // The runtime's default runs at that geometry.
    assert_eq!(segmenter.network_input_size(640, 480).unwrap(), (16, 32));
}

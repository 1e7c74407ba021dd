//! End-to-end tests of the training pipeline on tiny models and generated data.

use std::path::Path;
use std::sync::Arc;

use unet_models::candle_core::Device;
use unet_models::io::ConfigSource;
use unet_models::UNet;
use unet_trainer::amp::Precision;
use unet_trainer::augment::AugmentConfig;
use unet_trainer::checkpoint;
use unet_trainer::data::{self, DataSpec, FileSource, LayoutKind, Source};
use unet_trainer::optim::OptimizerKind;
use unet_trainer::synth::write_synthetic;
use unet_trainer::train::{self, BEST_FILE, CHECKPOINT_FILE, LAST_FILE};
use unet_trainer::TrainError;

use crate::{demo, tiny, tiny_options};

/// The training loss fell by a quarter and Dice rose well past chance.
fn assert_learned(s: &train::Summary) {
    let (first, last) = (&s.history[0], s.history.last().unwrap());
    let curve: Vec<_> = s
        .history
        .iter()
        .map(|r| (r.train_loss, r.val_loss, r.val.dice))
        .collect();
    assert!(
        last.train_loss < 0.75 * first.train_loss,
        "loss {} -> {}: {curve:?}",
        first.train_loss,
        last.train_loss
    );
    assert!(s.best_dice > 0.6, "best dice {}: {curve:?}", s.best_dice);
}

/// A few epochs on 40 synthetic 32x32 frames: loss falls, Dice rises well past chance.
#[test]
fn short_run_learns() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = tiny_options(6);
    opts.augment = Some(AugmentConfig {
        elastic_sigma: 2.0,
        ..AugmentConfig::default()
    });
    let s = train::run(&opts, demo(40), dir.path(), &Device::Cpu, None, true).unwrap();
    assert_learned(&s);
    for f in [
        BEST_FILE,
        LAST_FILE,
        CHECKPOINT_FILE,
        "metrics.jsonl",
        "curves.png",
        "val_preview.png",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 6);
    // best.safetensors is a self-describing model file with the statistics used.
    let loaded = unet_models::io::load(
        &dir.path().join(BEST_FILE),
        ConfigSource::Metadata,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.model.config(), &opts.model);
    let samples: Vec<_> = {
        let src = demo(40);
        let (train_idx, _) = train::split(40, 0.2, opts.seed).unwrap();
        train_idx.iter().map(|&i| src.get(i).unwrap()).collect()
    };
    let (mean, std) = data::channel_stats(&samples);
    assert_eq!(loaded.preprocessing.mean, mean);
    assert_eq!(loaded.preprocessing.std, std);
}

/// bf16 mixed precision learns as f32 does, and writes f32 weights.
#[test]
fn bf16_run_learns_with_f32_master_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = tiny_options(6);
    opts.precision = Precision::Bf16;
    let s = train::run(&opts, demo(40), dir.path(), &Device::Cpu, None, true).unwrap();
    assert_learned(&s);
    let best = unet_models::io::load(
        &dir.path().join(BEST_FILE),
        ConfigSource::Metadata,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        best.model.param_dtype(),
        unet_models::candle_core::DType::F32
    );
}

/// f16's loss scale is taken out again before the update: with plain SGD
/// (which, unlike Adam, is not invariant to the gradient's scale) an f16 run
/// moves the weights as the f32 run does.
#[test]
fn f16_loss_scaling_leaves_sgd_updates_as_in_f32() {
    let update = |precision| -> Vec<f32> {
        let mut opts = tiny_options(1);
        opts.precision = precision;
        opts.optimizer.kind = OptimizerKind::Sgd;
        opts.optimizer.momentum = 0.0;
        opts.lr = 0.05;
        opts.augment = None;
        opts.stop_after_steps = Some(2);
        let dir = tempfile::tempdir().unwrap();
        train::run(&opts, demo(24), dir.path(), &Device::Cpu, None, true).unwrap();
        let ck = checkpoint::load(&dir.path().join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
        assert_eq!(ck.state.loss_scaler.is_some(), precision == Precision::F16);
        let init = UNet::new(&opts.model, &Device::Cpu, opts.seed).unwrap();
        ck.loaded
            .model
            .trainable_vars()
            .iter()
            .zip(init.trainable_vars())
            .flat_map(|((_, w), (_, w0))| {
                let d = w.as_tensor().sub(w0.as_tensor()).unwrap();
                d.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            })
            .collect()
    };
    let (f32_step, f16_step) = (update(Precision::F32), update(Precision::F16));
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let diff: Vec<f32> = f16_step.iter().zip(&f32_step).map(|(a, b)| a - b).collect();
    assert!(norm(&f32_step) > 1e-3, "the weights did not move");
    let err = norm(&diff) / norm(&f32_step);
    assert!(err < 0.1, "f16 update differs from f32 by {err} (relative)");
}

fn state_bits(path: &Path) -> Vec<(String, Vec<u8>)> {
    let m = unet_models::io::load(path, ConfigSource::Metadata, &Device::Cpu)
        .unwrap()
        .model;
    m.state_dict()
        .into_iter()
        .map(|(n, t)| {
            let bytes = match t.dtype() {
                unet_models::candle_core::DType::I64 => {
                    t.to_scalar::<i64>().unwrap().to_le_bytes().to_vec()
                }
                _ => t
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            };
            (n, bytes)
        })
        .collect()
}

/// Interrupted mid-epoch and resumed = uninterrupted, bit for bit (weights,
/// BatchNorm statistics, optimiser moments, dropout masks, loss history).
#[test]
fn resume_is_bit_exact() {
    for (kind, accumulate, dropout, precision) in [
        (OptimizerKind::Adamw, 1, 0.0, Precision::F32),
        (OptimizerKind::Sgd, 2, 0.3, Precision::F32),
        // f16 also carries its dynamic loss scale across the interruption.
        (OptimizerKind::Adamw, 1, 0.0, Precision::F16),
    ] {
        let mut opts = tiny_options(2);
        opts.model = tiny(false, dropout);
        opts.precision = precision;
        opts.optimizer.kind = kind;
        opts.accumulate = accumulate;
        opts.lr = if kind == OptimizerKind::Sgd {
            1e-3
        } else {
            1e-2
        };
        opts.clip_grad_norm = Some(5.0);
        let full_dir = tempfile::tempdir().unwrap();
        let full = train::run(&opts, demo(24), full_dir.path(), &Device::Cpu, None, true).unwrap();

        let part_dir = tempfile::tempdir().unwrap();
        // 20 training samples / batch 4 = 5 batches per epoch; stop inside epoch 2.
        // f16 stops inside epoch 1, before any best Dice exists (-inf in the checkpoint).
        let stop = match (accumulate, precision) {
            (_, Precision::F16) => 3,
            (1, _) => 7,
            _ => 4,
        };
        let steps_per_epoch = 5usize.div_ceil(accumulate) as u64;
        let mut first = opts.clone();
        first.stop_after_steps = Some(stop);
        let part = train::run(&first, demo(24), part_dir.path(), &Device::Cpu, None, true).unwrap();
        assert!(part.interrupted);
        assert_eq!(part.history.len() as u64, stop / steps_per_epoch);
        let ck = part_dir.path().join(CHECKPOINT_FILE);
        let resumed = train::run(
            &opts,
            demo(24),
            part_dir.path(),
            &Device::Cpu,
            Some(&ck),
            true,
        )
        .unwrap();

        let mut losses = part.step_losses.clone();
        losses.extend(&resumed.step_losses);
        assert_eq!(losses, full.step_losses, "{kind:?}: loss curves differ");
        assert_eq!(resumed.history.len(), 2);
        for (a, b) in resumed.history.iter().zip(&full.history) {
            assert_eq!(a.train_loss, b.train_loss);
            assert_eq!(a.val_loss, b.val_loss);
            assert_eq!(a.val, b.val);
        }
        assert_eq!(
            state_bits(&part_dir.path().join(LAST_FILE)),
            state_bits(&full_dir.path().join(LAST_FILE)),
            "{kind:?}: weights differ"
        );
        let a = checkpoint::load(&part_dir.path().join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
        let b = checkpoint::load(&full_dir.path().join(CHECKPOINT_FILE), &Device::Cpu).unwrap();
        assert_eq!(a.state.global_step, b.state.global_step);
        assert_eq!(a.state.dropout_step, b.state.dropout_step);
        assert_eq!(a.state.loss_scaler, b.state.loss_scaler);
        assert_eq!(a.state.loss_scaler.is_some(), precision == Precision::F16);
        assert!(!a.optimizer.is_empty());
        for (name, t) in &a.optimizer {
            let u = b.optimizer[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                u,
                "{name}"
            );
        }
    }
}

/// Same seed and thread count, same loss curve; another seed, another curve.
#[test]
fn same_seed_same_curve() {
    let mut opts = tiny_options(1);
    opts.model = tiny(true, 0.0);
    let run = |seed: u64| {
        let mut o = opts.clone();
        o.seed = seed;
        let dir = tempfile::tempdir().unwrap();
        train::run(&o, demo(24), dir.path(), &Device::Cpu, None, true)
            .unwrap()
            .step_losses
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
}

/// The loader's batches do not depend on the number of workers.
#[test]
fn loader_is_independent_of_workers() {
    use unet_trainer::loader::{EpochLoader, LoaderConfig};
    let src = demo(10);
    let cfg = |workers| {
        Arc::new(LoaderConfig {
            batch_size: 3,
            workers,
            prefetch: 1,
            width: 32,
            height: 32,
            seed: 5,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            augment: Some(AugmentConfig::default()),
        })
    };
    let order: Vec<usize> = (0..10).rev().collect();
    let collect = |w| {
        EpochLoader::new(Arc::clone(&src), cfg(w), &order, 3, 1)
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let a = collect(0);
    assert_eq!(a.len(), 3); // batches 1..4 of 4
    assert_eq!(a[0].indices, vec![6, 5, 4]);
    assert_eq!(a, collect(1));
    assert_eq!(a, collect(3));
}

/// The loader counts the CPU time of its batches on whichever thread builds
/// them, and how long the consumer waited for them.
#[test]
fn loader_reports_what_its_batches_cost() {
    use unet_trainer::loader::{EpochLoader, LoaderConfig};
    let src = demo(9);
    for workers in [0, 2] {
        let cfg = Arc::new(LoaderConfig {
            batch_size: 3,
            workers,
            prefetch: 1,
            width: 48,
            height: 48,
            seed: 5,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            augment: Some(AugmentConfig::default()),
        });
        let order: Vec<usize> = (0..9).collect();
        let mut loader = EpochLoader::new(Arc::clone(&src), cfg, &order, 0, 0);
        assert_eq!(loader.cost().batches, 0);
        assert_eq!(loader.by_ref().count(), 3);
        let cost = loader.cost();
        assert_eq!(cost.batches, 3, "{workers} workers");
        assert!(
            cost.cpu > std::time::Duration::ZERO,
            "{workers} workers: {cost:?}"
        );
        if workers == 0 {
            // The consumer built every batch itself: it waited at least that long.
            assert!(cost.waited >= cost.cpu, "{cost:?}");
        }
    }
}

// ---- data sets on disk ----

fn write_rgb(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .save(path)
        .unwrap();
}

fn write_mask(path: &Path, w: u32, h: u32) {
    image::GrayImage::from_fn(w, h, |x, _| image::Luma([if x < w / 2 { 255 } else { 0 }]))
        .save(path)
        .unwrap();
}

fn kvasir(dir: &Path, stems: &[&str]) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for s in stems {
        write_rgb(&dir.join("images").join(format!("{s}.jpg")), 16, 12);
        write_mask(&dir.join("masks").join(format!("{s}.png")), 16, 12);
    }
}

fn scan_err(dir: &Path) -> String {
    let spec = DataSpec::detect(dir).unwrap();
    match data::scan(&spec, 3, 1, false) {
        Err(e) => e.to_string(),
        Ok(r) => panic!("expected an error, got {} pairs", r.pairs.len()),
    }
}

#[test]
fn detects_layouts_and_loads_pairs() {
    let dir = tempfile::tempdir().unwrap();
    kvasir(dir.path(), &["a", "b"]);
    let spec = DataSpec::detect(dir.path()).unwrap();
    assert_eq!(spec.kind, LayoutKind::KvasirSeg);
    let r = data::scan(&spec, 3, 1, false).unwrap();
    assert_eq!(
        r.pairs.iter().map(|p| p.stem.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let s = data::load_pair(&r.pairs[0], 3, 1).unwrap();
    assert_eq!((s.width, s.height, s.channels), (16, 12, 3));
    // Left half foreground (255 > 127), right half background.
    assert_eq!(
        &s.mask[..16],
        &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    );

    let car = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(car.path().join("train")).unwrap();
    std::fs::create_dir_all(car.path().join("train_masks")).unwrap();
    write_rgb(&car.path().join("train/0cdf5b5d0ce1_01.jpg"), 20, 10);
    // Carvana masks are palette GIFs; the GIF encoder takes RGB.
    image::RgbImage::from_fn(20, 10, |x, _| image::Rgb([if x < 10 { 255 } else { 0 }; 3]))
        .save(car.path().join("train_masks/0cdf5b5d0ce1_01_mask.gif"))
        .unwrap();
    let spec = DataSpec::detect(car.path()).unwrap();
    assert_eq!(spec.kind, LayoutKind::Carvana);
    let r = data::scan(&spec, 3, 1, false).unwrap();
    assert_eq!(r.pairs.len(), 1);
    let s = data::load_pair(&r.pairs[0], 3, 1).unwrap();
    assert_eq!(s.mask.iter().filter(|&&m| m == 1).count(), 100);
}

#[test]
fn empty_or_unknown_folders_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let e = DataSpec::detect(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("no data set layout") && e.contains("empty folder"),
        "{e}"
    );
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::create_dir_all(dir.path().join("masks")).unwrap();
    let e = scan_err(dir.path());
    assert!(
        e.contains("no image files found") && e.contains("images"),
        "{e}"
    );
}

#[test]
fn bad_files_are_listed_together_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kvasir(d, &["good1", "good2"]);
    // Mismatched stems in both directions.
    write_rgb(&d.join("images/orphan.jpg"), 16, 12);
    write_mask(&d.join("masks/lonely.png"), 16, 12);
    // Unreadable image.
    std::fs::write(d.join("images/broken.jpg"), b"this is not a jpeg").unwrap();
    write_mask(&d.join("masks/broken.png"), 16, 12);
    // Mask of the wrong size.
    write_rgb(&d.join("images/small.jpg"), 16, 12);
    write_mask(&d.join("masks/small.png"), 8, 6);
    // Wrong channel count: a gray image for a 3-channel model.
    image::GrayImage::new(16, 12)
        .save(d.join("images/gray.png"))
        .unwrap();
    write_mask(&d.join("masks/gray.png"), 16, 12);

    let e = scan_err(d);
    assert!(
        e.contains("5 unusable file(s)") && e.contains("--skip-bad"),
        "{e}"
    );
    for needle in [
        "orphan.jpg: no mask with stem `orphan`",
        "lonely.png: no image with stem `lonely`",
        "broken.jpg",
        "small.png: mask is 8x6, its image",
        "gray.png: image has 1 channel(s)",
    ] {
        assert!(e.contains(needle), "`{needle}` not in:\n{e}");
    }
    let r = data::scan(&DataSpec::detect(d).unwrap(), 3, 1, true).unwrap();
    assert_eq!(
        r.pairs.iter().map(|p| p.stem.as_str()).collect::<Vec<_>>(),
        ["good1", "good2"]
    );
    assert_eq!(r.skipped.len(), 5);
}

#[test]
fn multiclass_masks_hold_class_indices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kvasir(d, &[]);
    write_rgb(&d.join("images/a.png"), 4, 1);
    image::GrayImage::from_raw(4, 1, vec![0, 1, 2, 1])
        .unwrap()
        .save(d.join("masks/a.png"))
        .unwrap();
    let pairs = data::scan(&DataSpec::detect(d).unwrap(), 3, 3, false)
        .unwrap()
        .pairs;
    assert_eq!(
        data::load_pair(&pairs[0], 3, 3).unwrap().mask,
        vec![0, 1, 2, 1]
    );
    let e = data::load_pair(&pairs[0], 3, 2).unwrap_err().to_string();
    assert!(
        e.contains("class index 2 out of range for 2 classes") && e.contains("a.png"),
        "{e}"
    );
}

/// The synthetic set written to disk reads back as the in-memory one (masks exactly).
#[test]
fn synthetic_data_round_trips_through_disk() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic(dir.path(), 3, 32, 9).unwrap();
    let spec = DataSpec::detect(dir.path()).unwrap();
    let src = FileSource {
        pairs: data::scan(&spec, 3, 1, false).unwrap().pairs,
        in_channels: 3,
        classes: 1,
    };
    for i in 0..3 {
        let disk = src.get(i).unwrap();
        let mem = unet_trainer::synth::generate(9, i as u64, 32);
        assert_eq!(disk.mask, mem.mask);
        let err = disk
            .image
            .iter()
            .zip(&mem.image)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.15, "JPEG error {err}");
    }
}

#[test]
fn resume_rejects_a_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let opts = tiny_options(1);
    train::run(&opts, demo(12), dir.path(), &Device::Cpu, None, true).unwrap();
    let e = match train::run(
        &opts,
        demo(12),
        dir.path(),
        &Device::Cpu,
        Some(&dir.path().join(BEST_FILE)),
        true,
    ) {
        Err(e @ TrainError::BadCheckpoint { .. }) => e.to_string(),
        other => panic!("{:?}", other.map(|s| s.history.len())),
    };
    assert!(e.contains("not a training checkpoint"), "{e}");
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let e = unet_trainer::cli::parse_device("cuda:1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("built without CUDA") && e.contains("--features cuda"),
        "{e}"
    );
    assert!(unet_trainer::cli::parse_device("tpu").is_err());
    assert!(unet_trainer::cli::parse_device("cpu").is_ok());
}

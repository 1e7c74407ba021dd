//! One fuzz input for the safetensors loader, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/safetensors.rs`) and the corpus replay in
//! `fuzz_replay.rs`: any input may be refused, none may panic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use unet_models::candle_core::{DType, Device, Tensor};
use unet_models::io::{self, ConfigSource};
use unet_models::Padding;

/// Writes `data` as a model file and reads it the two ways the tools do.
pub fn safetensors(data: &[u8]) {
    // The loader takes a path; one file per call (the replay runs in parallel).
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "unet-fuzz-{}-{}.safetensors",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, data).expect("writing the scratch model file");
    let _ = io::read_metadata(&path);
    if let Ok(loaded) = io::load(&path, ConfigSource::Metadata, &Device::Cpu) {
        // What the exporter's parity check does next: a forward pass, here at
        // the smallest size a `same` model takes (a `valid` one needs far more).
        let cfg = loaded.model.config().clone();
        let side = cfg.size_multiple();
        if cfg.padding == Padding::Same && side <= 32 {
            let x = Tensor::zeros((1, cfg.in_channels, side, side), DType::F32, &Device::Cpu)
                .expect("input tensor");
            let y = loaded
                .model
                .forward(&x)
                .expect("forward of a validated model");
            assert_eq!(y.dims(), &[1, cfg.out_channels, side, side]);
        }
    }
    let _ = std::fs::remove_file(&path);
}

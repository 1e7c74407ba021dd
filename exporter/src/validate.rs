//! Refuses a model that would export to a broken file: BatchNorm statistics
//! no trained network has (a negative or non-finite running variance makes
//! every output NaN), and preprocessing the runtime cannot apply (it would
//! refuse the exported file).
//!
//! The preprocessing rules are the runtime's (`unet_runtime::metadata`);
//! they belong in the spec crate's `Preprocessing::validate` once it lands.

use unet_models::candle_core::DType;
use unet_models::{Preprocessing, UNet};

use crate::error::{ExportError, Result};

/// Every BatchNorm `running_var` finite and `>= 0`.
///
/// Other non-finite weights are refused when the file is read
/// (`unet_models::io::load`); a variance is the one value whose sign matters.
pub fn check_weights(model: &UNet) -> Result<()> {
    for (name, tensor) in model.state_dict() {
        if !name.ends_with(".running_var") {
            continue;
        }
        let values = tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(v.is_finite() && **v >= 0.0))
        {
            return Err(ExportError::BadWeight {
                name,
                reason: format!(
                    "running variance {value} at index {index}: a variance is finite and \
                     never negative (every output would be NaN); the file is damaged"
                ),
            });
        }
    }
    Ok(())
}

/// Mean and std per input channel, std finite and non-zero, finite means, a
/// known channel order and a threshold in [0, 1].
pub fn check_preprocessing(pre: &Preprocessing, in_channels: usize) -> Result<()> {
    let bad = |reason: String| Err(ExportError::BadPreprocessing { reason });
    if pre.mean.len() != in_channels || pre.std.len() != in_channels {
        return Err(ExportError::PreprocessingChannels {
            mean: pre.mean.len(),
            std: pre.std.len(),
            channels: in_channels,
        });
    }
    if let Some(s) = pre.std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
        return bad(format!(
            "std {s}: every std must be finite and non-zero (pixels are divided by it)"
        ));
    }
    if let Some(m) = pre.mean.iter().find(|m| !m.is_finite()) {
        return bad(format!("mean {m}: every mean must be finite"));
    }
    if !matches!(pre.channel_order.as_str(), "rgb" | "bgr" | "gray") {
        return bad(format!(
            "channel_order `{}`: expected rgb, bgr or gray",
            pre.channel_order
        ));
    }
    if !(0.0..=1.0).contains(&pre.threshold) {
        return bad(format!(
            "threshold {}: a probability threshold is in [0, 1]",
            pre.threshold
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(mean: Vec<f32>, std: Vec<f32>) -> Preprocessing {
        Preprocessing {
            mean,
            std,
            threshold: 0.5,
            class_names: vec![],
            channel_order: "rgb".into(),
        }
    }

    #[test]
    fn preprocessing_the_runtime_refuses_is_refused() {
        assert!(check_preprocessing(&pre(vec![0.5; 3], vec![0.25; 3]), 3).is_ok());
        let e = check_preprocessing(&pre(vec![0.5], vec![0.25; 3]), 3).unwrap_err();
        assert!(e.to_string().contains("1 mean and 3 std"), "{e}");
        let e = check_preprocessing(&pre(vec![0.5; 3], vec![0.2, 0.0, 0.2]), 3).unwrap_err();
        assert!(e.to_string().contains("std 0"), "{e}");
        let e = check_preprocessing(&pre(vec![0.5; 3], vec![0.2, f32::NAN, 0.2]), 3).unwrap_err();
        assert!(e.to_string().contains("std NaN"), "{e}");
        let mut p = pre(vec![0.5; 3], vec![0.25; 3]);
        p.threshold = 2.0;
        assert!(check_preprocessing(&p, 3).is_err());
        p.threshold = 0.5;
        p.channel_order = "rgba".into();
        assert!(check_preprocessing(&p, 3).is_err());
    }
}

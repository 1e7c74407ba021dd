//! Refuses a model that would export to a broken file: BatchNorm statistics
//! no trained network has (a negative or non-finite running variance makes
//! every output NaN), and preprocessing the runtime cannot apply (it would
//! refuse the exported file).
//!
//! The preprocessing rules are the spec crate's, which the runtime applies.

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

/// The spec's rules (`Preprocessing::validate`, the ones the runtime applies
/// when it reads the file): mean and std per input channel, std finite and
/// non-zero, finite means, a threshold in [0, 1).
pub fn check_preprocessing(pre: &Preprocessing, in_channels: usize) -> Result<()> {
    pre.validate(in_channels)
        .map_err(|e| ExportError::BadPreprocessing {
            reason: match e {
                unet_spec::SpecError::BadMetadata { reason, .. } => reason,
                other => other.to_string(),
            },
        })
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
            channel_order: unet_models::config::ChannelOrder::Rgb,
        }
    }

    #[test]
    fn preprocessing_the_runtime_refuses_is_refused() {
        assert!(check_preprocessing(&pre(vec![0.5; 3], vec![0.25; 3]), 3).is_ok());
        let e = check_preprocessing(&pre(vec![0.5], vec![0.25; 3]), 3).unwrap_err();
        assert!(e.to_string().contains("1 means and 3 stds"), "{e}");
        let e = check_preprocessing(&pre(vec![0.5; 3], vec![0.2, 0.0, 0.2]), 3).unwrap_err();
        assert!(
            e.to_string().contains("std must be finite and non-zero"),
            "{e}"
        );
        let e = check_preprocessing(&pre(vec![0.5; 3], vec![0.2, f32::NAN, 0.2]), 3).unwrap_err();
        assert!(e.to_string().contains("std must be finite"), "{e}");
        let mut p = pre(vec![0.5; 3], vec![0.25; 3]);
        p.threshold = 2.0;
        assert!(check_preprocessing(&p, 3).is_err());
    }
}

//! Loads `state_dict`s of milesial/Pytorch-UNet
//! (<https://github.com/milesial/Pytorch-UNet>), the most used PyTorch U-Net,
//! saved as safetensors (`safetensors.torch.save_file(model.state_dict(), path)`).
//!
//! Its `UNet(n_channels, n_classes, bilinear)` is exactly our `same`-padding,
//! BatchNorm U-Net: `bilinear=False` is the `unet` preset (2x2 transposed
//! convolutions) and `bilinear=True` is `unet-bilinear` (align_corners=True
//! upsampling, the bottleneck and up-path convolutions halving the channels).
//! Both concatenate `[skip, upsampled]` as we do. Name map, per level `k`:
//!
//! | milesial | ours |
//! | --- | --- |
//! | `inc.double_conv.{i}` | `encoder.0.conv.{i}` |
//! | `down{k}.maxpool_conv.1.double_conv.{i}` (k < depth) | `encoder.{k}.conv.{i}` |
//! | `down{depth}.maxpool_conv.1.double_conv.{i}` | `bottleneck.conv.{i}` |
//! | `up{k}.up` (transposed conv only) | `decoder.{k-1}.up` |
//! | `up{k}.conv.double_conv.{i}` | `decoder.{k-1}.conv.{i}` |
//! | `outc.conv` | `head` |
//!
//! `i` is the `nn.Sequential` index (`0` conv, `1` BatchNorm, `3` conv, `4`
//! BatchNorm) in both. milesial feeds images scaled to [0, 1] without mean/std,
//! so the preprocessing is mean 0, std 1.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::Device;
use safetensors::SafeTensors;

use crate::arch::{Graph, ParamKind};
use crate::config::{Padding, Preprocessing, UNetConfig, Upsampling};
use crate::error::{ModelError, Result};
use crate::io::LoadedModel;
use crate::model::UNet;

/// Value of the `unet.source` metadata entry of a model imported from milesial.
pub const SOURCE: &str = "milesial/Pytorch-UNet";
/// Metadata key naming where the weights came from.
pub const SOURCE_KEY: &str = "unet.source";

/// Our `state_dict` name for a milesial name in a network with `depth` levels,
/// or `None` when the name is not part of milesial's model.
pub fn map_name(name: &str, depth: usize) -> Option<String> {
    if let Some(rest) = name.strip_prefix("inc.double_conv.") {
        return Some(format!("encoder.0.conv.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("outc.conv.") {
        return Some(format!("head.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("down") {
        let (k, rest) = split_level(rest)?;
        let rest = rest.strip_prefix("maxpool_conv.1.double_conv.")?;
        return match k {
            k if k >= 1 && k < depth => Some(format!("encoder.{k}.conv.{rest}")),
            k if k == depth => Some(format!("bottleneck.conv.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("up") {
        let (k, rest) = split_level(rest)?;
        if k == 0 || k > depth {
            return None;
        }
        let j = k - 1;
        if let Some(rest) = rest.strip_prefix("up.") {
            return Some(format!("decoder.{j}.up.{rest}"));
        }
        let rest = rest.strip_prefix("conv.double_conv.")?;
        return Some(format!("decoder.{j}.conv.{rest}"));
    }
    None
}

/// `"3.rest"` -> `(3, "rest")`.
fn split_level(s: &str) -> Option<(usize, &str)> {
    let (k, rest) = s.split_once('.')?;
    Some((k.parse().ok()?, rest))
}

/// Infers our configuration from a milesial `state_dict`'s names and shapes.
pub fn infer_config(path: &Path, shapes: &HashMap<String, Vec<usize>>) -> Result<UNetConfig> {
    let need = |name: &str| -> Result<&Vec<usize>> {
        shapes.get(name).ok_or_else(|| {
            ModelError::BadConfig(format!(
                "{}: not a milesial/Pytorch-UNet state_dict: no tensor `{name}`",
                path.display()
            ))
        })
    };
    let first = need("inc.double_conv.0.weight")?;
    let head = need("outc.conv.weight")?;
    need("inc.double_conv.1.running_mean")?;
    let (base_width, in_channels) = match first.as_slice() {
        [o, i, 3, 3] => (*o, *i),
        other => {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                name: "inc.double_conv.0.weight".into(),
                expected: vec![0, 0, 3, 3],
                got: other.to_vec(),
            })
        }
    };
    let out_channels = head.first().copied().unwrap_or(0);
    let depth = (1..)
        .take_while(|k| {
            shapes.contains_key(&format!("down{k}.maxpool_conv.1.double_conv.0.weight"))
        })
        .count();
    let upsampling = if shapes.contains_key("up1.up.weight") {
        Upsampling::Transposed
    } else {
        Upsampling::Bilinear
    };
    let cfg = UNetConfig {
        in_channels,
        out_channels,
        base_width,
        depth,
        padding: Padding::Same,
        batch_norm: true,
        upsampling,
        dropout: 0.0,
        attention: false,
    };
    cfg.validate().map_err(|e| {
        ModelError::BadConfig(format!(
            "{}: milesial/Pytorch-UNet state_dict implies an invalid config: {e}",
            path.display()
        ))
    })?;
    Ok(cfg)
}

/// milesial's preprocessing: pixels scaled to [0, 1], no mean/std; threshold 0.5.
pub fn preprocessing(cfg: &UNetConfig) -> Preprocessing {
    let defaults = Preprocessing::default_for(cfg);
    Preprocessing {
        mean: vec![0.0; cfg.in_channels],
        std: vec![1.0; cfg.in_channels],
        ..defaults
    }
}

/// Loads a milesial/Pytorch-UNet `state_dict` (safetensors): infers the
/// configuration, maps the names and validates every tensor (shape, dtype,
/// finite). Errors name the file and the milesial tensor name.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let bytes = std::fs::read(path).map_err(|reason| ModelError::Io {
        path: path.to_path_buf(),
        reason,
    })?;
    load_bytes(path, &bytes, device)
}

/// [`load`] of a `state_dict` already in memory as safetensors bytes (e.g.
/// converted from a PyTorch checkpoint); `path` names it in errors.
pub fn load_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<LoadedModel> {
    let not_st = |e: safetensors::SafeTensorError| ModelError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let st = SafeTensors::deserialize(bytes).map_err(not_st)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_st)?;
    let shapes: HashMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let config = infer_config(path, &shapes)?;
    let graph = Graph::build(&config)?;

    // Ours -> milesial, rejecting names milesial's model does not have.
    let mut theirs_of: HashMap<String, String> = HashMap::new();
    let mut names: Vec<&String> = shapes.keys().collect();
    names.sort_unstable();
    for name in names {
        match map_name(name, config.depth) {
            Some(ours) => {
                theirs_of.insert(ours, name.clone());
            }
            None => {
                return Err(ModelError::UnexpectedTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                })
            }
        }
    }
    let specs = graph.params();
    let known: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut extra: Vec<&String> = theirs_of
        .iter()
        .filter(|(ours, _)| !known.contains(ours.as_str()))
        .map(|(_, theirs)| theirs)
        .collect();
    extra.sort_unstable();
    if let Some(name) = extra.first() {
        return Err(ModelError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: (*name).clone(),
        });
    }

    let mut tensors = HashMap::with_capacity(specs.len());
    for spec in &specs {
        let Some(theirs) = theirs_of.get(&spec.name) else {
            if spec.kind == ParamKind::NumBatchesTracked {
                continue;
            }
            return Err(ModelError::MissingTensor {
                path: path.to_path_buf(),
                name: milesial_name(&spec.name, config.depth).unwrap_or(spec.name.clone()),
                shape: spec.shape.clone(),
            });
        };
        let view = st.tensor(theirs).map_err(not_st)?;
        let tensor = crate::io::tensor_from_view(path, theirs, spec, &view)?;
        tensors.insert(spec.name.clone(), tensor);
    }
    let preprocessing = preprocessing(&config);
    let model = UNet::from_named_tensors(graph, tensors, device, 0)?;
    let mut metadata = header.metadata().clone().unwrap_or_default();
    metadata.insert(SOURCE_KEY.into(), SOURCE.into());
    Ok(LoadedModel {
        model,
        preprocessing,
        metadata,
    })
}

/// The milesial name of one of our names (the inverse of [`map_name`]).
pub fn milesial_name(ours: &str, depth: usize) -> Option<String> {
    if let Some(rest) = ours.strip_prefix("encoder.0.conv.") {
        return Some(format!("inc.double_conv.{rest}"));
    }
    if let Some(rest) = ours.strip_prefix("bottleneck.conv.") {
        return Some(format!("down{depth}.maxpool_conv.1.double_conv.{rest}"));
    }
    if let Some(rest) = ours.strip_prefix("head.") {
        return Some(format!("outc.conv.{rest}"));
    }
    if let Some(rest) = ours.strip_prefix("encoder.") {
        let (k, rest) = split_level(rest)?;
        let rest = rest.strip_prefix("conv.")?;
        return Some(format!("down{k}.maxpool_conv.1.double_conv.{rest}"));
    }
    let rest = ours.strip_prefix("decoder.")?;
    let (j, rest) = split_level(rest)?;
    let k = j + 1;
    if let Some(rest) = rest.strip_prefix("up.") {
        return Some(format!("up{k}.up.{rest}"));
    }
    let rest = rest.strip_prefix("conv.")?;
    Some(format!("up{k}.conv.double_conv.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_onto_every_parameter_of_both_presets() {
        for (preset, bilinear) in [("unet-16", false), ("unet-bilinear-16", true)] {
            let cfg = UNetConfig::preset(preset).unwrap();
            let ours: HashSet<String> = Graph::build(&cfg)
                .unwrap()
                .params()
                .into_iter()
                .map(|p| p.name)
                .collect();
            // milesial's module tree for depth 4, written out by hand.
            let mut theirs = Vec::new();
            let dc = |prefix: &str, out: &mut Vec<String>| {
                for i in [0, 3] {
                    out.push(format!("{prefix}.double_conv.{i}.weight"));
                }
                for i in [1, 4] {
                    for s in [
                        "weight",
                        "bias",
                        "running_mean",
                        "running_var",
                        "num_batches_tracked",
                    ] {
                        out.push(format!("{prefix}.double_conv.{i}.{s}"));
                    }
                }
            };
            dc("inc", &mut theirs);
            for k in 1..=4 {
                dc(&format!("down{k}.maxpool_conv.1"), &mut theirs);
                dc(&format!("up{k}.conv"), &mut theirs);
                if !bilinear {
                    theirs.push(format!("up{k}.up.weight"));
                    theirs.push(format!("up{k}.up.bias"));
                }
            }
            theirs.push("outc.conv.weight".into());
            theirs.push("outc.conv.bias".into());
            let mapped: HashSet<String> = theirs
                .iter()
                .map(|n| map_name(n, 4).unwrap_or_else(|| panic!("{n} unmapped")))
                .collect();
            assert_eq!(mapped, ours, "{preset}");
            for n in &theirs {
                let back = map_name(n, 4).and_then(|o| milesial_name(&o, 4));
                assert_eq!(back.as_deref(), Some(n.as_str()));
            }
        }
    }

    #[test]
    fn specific_names() {
        assert_eq!(
            map_name("down4.maxpool_conv.1.double_conv.3.weight", 4).as_deref(),
            Some("bottleneck.conv.3.weight")
        );
        assert_eq!(
            map_name("down2.maxpool_conv.1.double_conv.1.running_var", 4).as_deref(),
            Some("encoder.2.conv.1.running_var")
        );
        assert_eq!(
            map_name("up1.up.weight", 4).as_deref(),
            Some("decoder.0.up.weight")
        );
        assert_eq!(
            map_name("up4.conv.double_conv.4.bias", 4).as_deref(),
            Some("decoder.3.conv.4.bias")
        );
        assert_eq!(map_name("outc.conv.bias", 4).as_deref(), Some("head.bias"));
        assert_eq!(map_name("up5.up.weight", 4), None);
        assert_eq!(
            map_name("down5.maxpool_conv.1.double_conv.0.weight", 4),
            None
        );
        assert_eq!(map_name("fc.weight", 4), None);
    }
}

//! The candle U-Net: parameters plus a forward pass that interprets [`Graph`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::arch::{Graph, Op, ParamKind};
use crate::config::UNetConfig;
use crate::error::{ModelError, Result};
use crate::layers;

/// A U-Net or Attention U-Net with its weights on one device.
///
/// Trainable parameters and BatchNorm buffers are [`Var`]s keyed by their
/// PyTorch `state_dict` names; training-mode forwards update the buffers in place.
pub struct UNet {
    graph: Graph,
    params: BTreeMap<String, Var>,
    buffers: BTreeMap<String, Var>,
    device: Device,
    dropout_seed: u64,
    /// Training forwards so far; keys the dropout masks so runs are reproducible and resumable.
    dropout_step: AtomicU64,
    /// Mixed precision: the dtype of activations and convolutions when it differs from the
    /// parameters' (see [`UNet::set_compute_dtype`]).
    compute_dtype: Option<DType>,
}

impl UNet {
    /// A freshly initialised network: He-normal convolution weights (as the
    /// U-Net paper prescribes), zero biases, unit BatchNorm scale.
    pub fn new(config: &UNetConfig, device: &Device, seed: u64) -> Result<Self> {
        let graph = Graph::build(config)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for spec in graph.params() {
            let numel: usize = spec.shape.iter().product();
            let node = &graph.nodes[spec.node];
            let tensor = match spec.kind {
                ParamKind::Weight => {
                    let fan_in = match node.op {
                        Op::Conv2d {
                            in_channels,
                            kernel,
                            ..
                        } => in_channels * kernel * kernel,
                        // Each output pixel of a stride-2 2x2 transposed conv sees one tap per input channel.
                        Op::ConvTranspose2x2 { in_channels, .. } => in_channels,
                        _ => 0,
                    };
                    if fan_in == 0 {
                        Tensor::ones(spec.shape.as_slice(), DType::F32, device)?
                    } else {
                        let std = (2.0 / fan_in as f64).sqrt() as f32;
                        let normal = Normal::new(0.0f32, std)
                            .map_err(|e| ModelError::BadConfig(e.to_string()))?;
                        let data: Vec<f32> = (0..numel).map(|_| normal.sample(&mut rng)).collect();
                        Tensor::from_vec(data, spec.shape.as_slice(), device)?
                    }
                }
                ParamKind::Bias | ParamKind::RunningMean => {
                    Tensor::zeros(spec.shape.as_slice(), DType::F32, device)?
                }
                ParamKind::RunningVar => Tensor::ones(spec.shape.as_slice(), DType::F32, device)?,
                ParamKind::NumBatchesTracked => layers::scalar_i64(0, device)?,
            };
            tensors.insert(spec.name, tensor);
        }
        Self::from_named_tensors(graph, tensors, device, seed)
    }

    /// Builds the model from tensors already checked against `graph.params()`
    /// (see [`crate::io`]); a missing `num_batches_tracked` starts at zero.
    pub(crate) fn from_named_tensors(
        graph: Graph,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let mut params = BTreeMap::new();
        let mut buffers = BTreeMap::new();
        for spec in graph.params() {
            let tensor = match tensors.remove(&spec.name) {
                Some(t) => t.to_device(device)?,
                None if spec.kind == ParamKind::NumBatchesTracked => layers::scalar_i64(0, device)?,
                None => {
                    return Err(ModelError::BadConfig(format!(
                        "tensor `{}` missing",
                        spec.name
                    )))
                }
            };
            let var = Var::from_tensor(&tensor)?;
            if spec.kind.is_trainable() {
                params.insert(spec.name, var);
            } else {
                buffers.insert(spec.name, var);
            }
        }
        Ok(UNet {
            graph,
            params,
            buffers,
            device: device.clone(),
            dropout_seed: seed,
            dropout_step: AtomicU64::new(0),
            compute_dtype: None,
        })
    }

    /// A copy with floating-point tensors cast to `dtype` (e.g. f64 for gradient checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<UNet> {
        let cast = |map: &BTreeMap<String, Var>| -> Result<BTreeMap<String, Var>> {
            map.iter()
                .map(|(name, var)| {
                    // detach() drops the variable flag, so from_tensor copies the storage.
                    let t = var.as_tensor().detach();
                    let t = if t.dtype().is_float() {
                        t.to_dtype(dtype)?
                    } else {
                        t
                    };
                    Ok((name.clone(), Var::from_tensor(&t.detach())?))
                })
                .collect()
        };
        Ok(UNet {
            graph: self.graph.clone(),
            params: cast(&self.params)?,
            buffers: cast(&self.buffers)?,
            device: self.device.clone(),
            dropout_seed: self.dropout_seed,
            dropout_step: AtomicU64::new(self.dropout_step()),
            compute_dtype: self.compute_dtype,
        })
    }

    /// Mixed precision, as PyTorch's autocast: convolutions, activations and their
    /// gradients in `dtype` (bf16 or f16), while the parameters stay the master copy
    /// in their own dtype (gradients reach them in it), BatchNorm normalises in it,
    /// and the logits come back in it. The parameters' own dtype turns it off.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !dtype.is_float() {
            return Err(ModelError::BadConfig(format!(
                "compute dtype {dtype:?} is not a floating-point type"
            )));
        }
        self.compute_dtype = (dtype != self.param_dtype()).then_some(dtype);
        Ok(())
    }

    /// The dtype convolutions and activations run in.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype.unwrap_or_else(|| self.param_dtype())
    }

    /// The dtype of the trainable parameters (the master weights).
    pub fn param_dtype(&self) -> DType {
        self.params
            .values()
            .next()
            .map_or(DType::F32, |v| v.as_tensor().dtype())
    }

    pub fn config(&self) -> &UNetConfig {
        &self.graph.config
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Trainable scalars, as PyTorch counts `parameters()`.
    pub fn num_parameters(&self) -> usize {
        self.graph.num_parameters()
    }

    /// Trainable variables in graph (state_dict) order, for an optimiser.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.graph
            .params()
            .into_iter()
            .filter_map(|spec| self.params.get(&spec.name).map(|v| (spec.name, v.clone())))
            .collect()
    }

    /// Every tensor of the `state_dict` (parameters and buffers) in graph order.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.graph
            .params()
            .into_iter()
            .filter_map(|spec| {
                let var = self
                    .params
                    .get(&spec.name)
                    .or(self.buffers.get(&spec.name))?;
                Some((spec.name, var.as_tensor().detach()))
            })
            .collect()
    }

    /// The dropout step counter, saved in checkpoints so a resumed run draws the same masks.
    pub fn dropout_step(&self) -> u64 {
        self.dropout_step.load(Ordering::Relaxed)
    }

    pub fn set_dropout_step(&self, step: u64) {
        self.dropout_step.store(step, Ordering::Relaxed);
    }

    /// Eval-mode forward.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// Forward pass of `x [N, in_channels, H, W]` to logits `[N, out_channels, H', W']`.
    /// In training mode BatchNorm uses batch statistics and updates its running
    /// statistics (momentum 0.1), and dropout is active.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.config().in_channels {
            return Err(ModelError::InputShape {
                got: dims.to_vec(),
                channels: self.config().in_channels,
            });
        }
        let sizes = self.graph.spatial_sizes(dims[2], dims[3])?;
        let nodes = &self.graph.nodes;
        // Free each activation after its last consumer (matters for inference memory).
        let mut last_use = vec![0usize; nodes.len()];
        let mut consumers = vec![0usize; nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = id;
                consumers[i] += 1;
            }
        }
        // A BatchNorm whose one consumer is a ReLU computes both (one fused op on the CPU).
        let relu_fused = |id: usize| {
            matches!(nodes[id].op, Op::BatchNorm2d { .. })
                && consumers[id] == 1
                && matches!(nodes[last_use[id]].op, Op::Relu)
        };
        let mut values: Vec<Option<Tensor>> = vec![None; nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            let input = |k: usize| -> Result<&Tensor> {
                values[node.inputs[k]]
                    .as_ref()
                    .ok_or_else(|| ModelError::BadConfig(format!("{}: input not ready", node.name)))
            };
            let param = |suffix: &str| -> Result<Tensor> {
                let t = self.tensor(&node.name, suffix)?;
                Ok(match self.compute_dtype {
                    // to_dtype is differentiable: the gradient returns to the master dtype.
                    Some(dtype) => t.to_dtype(dtype)?,
                    None => t,
                })
            };
            let y = match &node.op {
                Op::Input => match self.compute_dtype {
                    Some(dtype) => x.to_dtype(dtype)?,
                    None => x.clone(),
                },
                Op::Conv2d { padding, bias, .. } => {
                    let b = if *bias { Some(param("bias")?) } else { None };
                    layers::conv2d(input(0)?, &param("weight")?, b.as_ref(), *padding)?
                }
                Op::BatchNorm2d { .. } => {
                    self.batch_norm(&node.name, input(0)?, train, relu_fused(id))?
                }
                Op::Relu if relu_fused(node.inputs[0]) => input(0)?.clone(),
                Op::Relu => layers::relu(input(0)?)?,
                Op::Sigmoid => candle_nn::ops::sigmoid(input(0)?)?,
                Op::MaxPool2x2 => layers::max_pool2x2(input(0)?)?,
                Op::Dropout { p } if train && *p > 0.0 => self.dropout(input(0)?, *p)?,
                Op::Dropout { .. } => input(0)?.clone(),
                Op::ConvTranspose2x2 { .. } => {
                    layers::conv_transpose2x2(input(0)?, &param("weight")?, &param("bias")?)?
                }
                Op::UpsampleBilinear2x { align_corners } => {
                    layers::upsample_bilinear2x(input(0)?, *align_corners)?
                }
                Op::CenterCropLike => {
                    let (h, w) = sizes[node.inputs[1]];
                    layers::center_crop(input(0)?, h, w)?
                }
                Op::Concat => {
                    let parts: Vec<&Tensor> =
                        (0..node.inputs.len()).map(input).collect::<Result<_>>()?;
                    Tensor::cat(&parts, 1)?
                }
                Op::Add => (input(0)? + input(1)?)?,
                Op::MulBroadcastChannels => layers::mul_channel_planes(input(0)?, input(1)?)?,
            };
            values[id] = Some(y);
            for &i in &node.inputs {
                if last_use[i] == id {
                    values[i] = None;
                }
            }
        }
        let logits = values[self.graph.output()]
            .take()
            .ok_or_else(|| ModelError::BadConfig("graph has no output".into()))?;
        Ok(match self.compute_dtype {
            // Losses and metrics see the master dtype, as under autocast.
            Some(_) => logits.to_dtype(self.param_dtype())?,
            None => logits,
        })
    }

    fn tensor(&self, prefix: &str, suffix: &str) -> Result<Tensor> {
        let name = format!("{prefix}.{suffix}");
        self.params
            .get(&name)
            .or_else(|| self.buffers.get(&name))
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| ModelError::BadConfig(format!("tensor `{name}` missing")))
    }

    fn buffer(&self, prefix: &str, suffix: &str) -> Result<&Var> {
        let name = format!("{prefix}.{suffix}");
        self.buffers
            .get(&name)
            .ok_or_else(|| ModelError::BadConfig(format!("buffer `{name}` missing")))
    }

    /// BatchNorm in the parameters' dtype whatever the compute dtype: batch
    /// statistics over N*H*W values lose too much in 8 mantissa bits.
    /// BatchNorm, then a ReLU if `relu`.
    fn batch_norm(&self, name: &str, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        match self.compute_dtype {
            // ReLU commutes with the rounding back to the half dtype.
            Some(dtype) => Ok(self
                .batch_norm_master(name, &x.to_dtype(self.param_dtype())?, train, relu)?
                .to_dtype(dtype)?),
            None => self.batch_norm_master(name, x, train, relu),
        }
    }

    fn batch_norm_master(&self, name: &str, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let weight = self.tensor(name, "weight")?;
        let bias = self.tensor(name, "bias")?;
        let running_mean = self.buffer(name, "running_mean")?;
        let running_var = self.buffer(name, "running_var")?;
        if !train {
            let y = layers::batch_norm_eval(
                x,
                &weight,
                &bias,
                running_mean.as_tensor(),
                running_var.as_tensor(),
            )?;
            return Ok(if relu { layers::relu(&y)? } else { y });
        }
        let (y, stats) = if relu {
            layers::batch_norm_relu_train(x, &weight, &bias)?
        } else {
            layers::batch_norm_train(x, &weight, &bias)?
        };
        running_mean.set(&layers::momentum_update(
            running_mean.as_tensor(),
            &stats.mean,
        )?)?;
        running_var.set(&layers::momentum_update(
            running_var.as_tensor(),
            &stats.unbiased_var,
        )?)?;
        let tracked = self.buffer(name, "num_batches_tracked")?;
        let count = tracked.as_tensor().to_scalar::<i64>()?;
        tracked.set(&layers::scalar_i64(count + 1, &self.device)?)?;
        Ok(y)
    }

    fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        let step = self.dropout_step.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.dropout_seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { 1.0 })
            .collect();
        Ok(layers::dropout_with_mask(x, &keep, p)?)
    }
}

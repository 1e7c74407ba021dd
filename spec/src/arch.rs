//! The one architecture description of U-Net (Ronneberger et al. 2015,
//! <https://arxiv.org/abs/1505.04597>) and Attention U-Net (Oktay et al. 2018,
//! <https://arxiv.org/abs/1804.03999>).
//!
//! [`Graph::build`] turns a [`UNetConfig`] into a topologically ordered list of
//! typed primitive layers. Every consumer derives from this list: the candle
//! forward pass (`unet_models::UNet`), the parameter list and its PyTorch
//! `state_dict` names ([`Graph::params`]), shape inference, and the ONNX lowering
//! in the exporter. Tensors are NCHW throughout.
//!
//! Weight names (a node's `name` is its parameter prefix):
//! - `encoder.{i}.conv.{k}` for level `i` in `0..depth`, `bottleneck.conv.{k}`;
//!   a double conv is the PyTorch `nn.Sequential` `[Conv, BN, ReLU, Conv, BN, ReLU]`
//!   (or `[Conv, ReLU, Conv, ReLU]` without BatchNorm), so `k` is that index;
//! - `decoder.{j}.up` (transposed conv), `decoder.{j}.attention.{W_g,W_x,psi}.{0,1}`,
//!   `decoder.{j}.conv.{k}` for `j` in `0..depth`, `j = 0` the deepest;
//! - `head` (1x1 conv with bias).

use crate::config::{Padding, UNetConfig, Upsampling};
use crate::error::{Result, SpecError};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// A primitive layer. Parameters hang off the node's name.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The network input `[N, in_channels, H, W]`.
    Input,
    /// Square kernel, stride 1, symmetric zero padding; `weight [out, in, k, k]`, optional `bias [out]`.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        bias: bool,
    },
    /// `weight`, `bias`, `running_mean`, `running_var` `[channels]`, `num_batches_tracked` (i64 scalar).
    BatchNorm2d {
        channels: usize,
    },
    Relu,
    Sigmoid,
    /// 2x2 max pooling, stride 2.
    MaxPool2x2,
    /// Zeroes activations with probability `p` in training, identity in eval.
    Dropout {
        p: f32,
    },
    /// 2x2 kernel, stride 2; `weight [in, out, 2, 2]`, `bias [out]`.
    ConvTranspose2x2 {
        in_channels: usize,
        out_channels: usize,
    },
    /// Bilinear x2 upsampling.
    UpsampleBilinear2x {
        align_corners: bool,
    },
    /// Central crop of input 0 to the spatial size of input 1.
    CenterCropLike,
    /// Concatenation of the inputs along channels, in input order.
    Concat,
    /// Element-wise sum of two tensors of equal shape.
    Add,
    /// Product of input 0 and input 1, input 1 broadcast along channels (`[N,1,H,W]`).
    MulBroadcastChannels,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique; for layers with parameters, the `state_dict` prefix.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// Output channels, known statically.
    pub channels: usize,
}

/// The role a parameter tensor plays; buffers are not trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
    NumBatchesTracked,
}

impl ParamKind {
    pub fn is_trainable(self) -> bool {
        matches!(self, ParamKind::Weight | ParamKind::Bias)
    }
    pub fn suffix(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::RunningMean => "running_mean",
            ParamKind::RunningVar => "running_var",
            ParamKind::NumBatchesTracked => "num_batches_tracked",
        }
    }
}

/// One tensor of the `state_dict`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Full name, e.g. `encoder.0.conv.0.weight`.
    pub name: String,
    pub node: NodeId,
    pub kind: ParamKind,
    /// Empty for the scalar `num_batches_tracked`.
    pub shape: Vec<usize>,
}

/// The network as a topologically ordered list of nodes; the last node is the output.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub config: UNetConfig,
    pub nodes: Vec<Node>,
}

impl Node {
    /// The parameters this node owns, in `state_dict` order.
    pub fn param_kinds(&self) -> Vec<(ParamKind, Vec<usize>)> {
        match self.op {
            Op::Conv2d {
                in_channels,
                out_channels,
                kernel,
                bias,
                ..
            } => {
                let mut v = vec![(
                    ParamKind::Weight,
                    vec![out_channels, in_channels, kernel, kernel],
                )];
                if bias {
                    v.push((ParamKind::Bias, vec![out_channels]));
                }
                v
            }
            Op::ConvTranspose2x2 {
                in_channels,
                out_channels,
            } => vec![
                (ParamKind::Weight, vec![in_channels, out_channels, 2, 2]),
                (ParamKind::Bias, vec![out_channels]),
            ],
            Op::BatchNorm2d { channels } => vec![
                (ParamKind::Weight, vec![channels]),
                (ParamKind::Bias, vec![channels]),
                (ParamKind::RunningMean, vec![channels]),
                (ParamKind::RunningVar, vec![channels]),
                (ParamKind::NumBatchesTracked, vec![]),
            ],
            _ => vec![],
        }
    }
}

/// Appends nodes while tracking names and channel counts.
struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn push(&mut self, name: String, op: Op, inputs: Vec<NodeId>) -> NodeId {
        let channels = match &op {
            Op::Input => 0, // set by the caller
            Op::Conv2d { out_channels, .. } | Op::ConvTranspose2x2 { out_channels, .. } => {
                *out_channels
            }
            Op::Concat => inputs.iter().map(|&i| self.nodes[i].channels).sum(),
            _ => self.nodes[inputs[0]].channels,
        };
        self.nodes.push(Node {
            name,
            op,
            inputs,
            channels,
        });
        self.nodes.len() - 1
    }

    /// `[Conv, (BN), ReLU] x 2` named like the PyTorch `nn.Sequential`.
    fn double_conv(
        &mut self,
        prefix: &str,
        x: NodeId,
        mid: usize,
        out: usize,
        cfg: &UNetConfig,
    ) -> NodeId {
        let padding = match cfg.padding {
            Padding::Same => 1,
            Padding::Valid => 0,
        };
        let mut x = x;
        let mut index = 0;
        for out_channels in [mid, out] {
            let in_channels = self.nodes[x].channels;
            let conv = Op::Conv2d {
                in_channels,
                out_channels,
                kernel: 3,
                padding,
                // A bias before BatchNorm is cancelled by its mean subtraction.
                bias: !cfg.batch_norm,
            };
            x = self.push(format!("{prefix}.{index}"), conv, vec![x]);
            index += 1;
            if cfg.batch_norm {
                let bn = Op::BatchNorm2d {
                    channels: out_channels,
                };
                x = self.push(format!("{prefix}.{index}"), bn, vec![x]);
                index += 1;
            }
            x = self.push(format!("{prefix}.{index}"), Op::Relu, vec![x]);
            index += 1;
        }
        x
    }

    /// `Conv1x1 (+ BN)` branch of an attention gate, named `{prefix}.0`, `{prefix}.1`.
    fn conv1x1_bn(&mut self, prefix: &str, x: NodeId, out: usize, bn: bool) -> NodeId {
        let conv = Op::Conv2d {
            in_channels: self.nodes[x].channels,
            out_channels: out,
            kernel: 1,
            padding: 0,
            bias: true,
        };
        let mut y = self.push(format!("{prefix}.0"), conv, vec![x]);
        if bn {
            let op = Op::BatchNorm2d { channels: out };
            y = self.push(format!("{prefix}.1"), op, vec![y]);
        }
        y
    }

    /// `x * sigmoid(BN(psi(relu(BN(W_g g) + BN(W_x x)))))`.
    fn attention_gate(&mut self, prefix: &str, g: NodeId, x: NodeId, bn: bool) -> NodeId {
        let inter = (self.nodes[x].channels / 2).max(1);
        let g1 = self.conv1x1_bn(&format!("{prefix}.W_g"), g, inter, bn);
        let x1 = self.conv1x1_bn(&format!("{prefix}.W_x"), x, inter, bn);
        let sum = self.push(format!("{prefix}.add"), Op::Add, vec![g1, x1]);
        let act = self.push(format!("{prefix}.relu"), Op::Relu, vec![sum]);
        let psi = self.conv1x1_bn(&format!("{prefix}.psi"), act, 1, bn);
        let psi = self.push(format!("{prefix}.sigmoid"), Op::Sigmoid, vec![psi]);
        self.push(
            format!("{prefix}.gate"),
            Op::MulBroadcastChannels,
            vec![x, psi],
        )
    }
}

impl Graph {
    /// Lowers a configuration to the layer graph.
    pub fn build(config: &UNetConfig) -> Result<Graph> {
        config.validate()?;
        let cfg = config;
        let mut b = Builder { nodes: Vec::new() };
        let input = b.push("input".into(), Op::Input, vec![]);
        b.nodes[input].channels = cfg.in_channels;

        // Contracting path.
        let mut skips = Vec::with_capacity(cfg.depth);
        let mut x = input;
        for level in 0..cfg.depth {
            if level > 0 {
                x = b.push(format!("encoder.{level}.pool"), Op::MaxPool2x2, vec![x]);
            }
            let w = cfg.width(level);
            x = b.double_conv(&format!("encoder.{level}.conv"), x, w, w, cfg);
            skips.push(x);
        }
        x = b.push("bottleneck.pool".into(), Op::MaxPool2x2, vec![x]);
        // Bilinear upsampling keeps channels, so the bottleneck halves them instead.
        let factor = match cfg.upsampling {
            Upsampling::Transposed => 1,
            Upsampling::Bilinear => 2,
        };
        let bottom = cfg.width(cfg.depth) / factor;
        x = b.double_conv("bottleneck.conv", x, bottom, bottom, cfg);
        if cfg.dropout > 0.0 {
            x = b.push(
                "bottleneck.dropout".into(),
                Op::Dropout { p: cfg.dropout },
                vec![x],
            );
        }

        // Expanding path, deepest level first.
        for j in 0..cfg.depth {
            let level = cfg.depth - 1 - j;
            let skip_width = cfg.width(level);
            let up = match cfg.upsampling {
                Upsampling::Transposed => {
                    let op = Op::ConvTranspose2x2 {
                        in_channels: b.nodes[x].channels,
                        out_channels: b.nodes[x].channels / 2,
                    };
                    b.push(format!("decoder.{j}.up"), op, vec![x])
                }
                Upsampling::Bilinear => {
                    let op = Op::UpsampleBilinear2x {
                        align_corners: true,
                    };
                    b.push(format!("decoder.{j}.up"), op, vec![x])
                }
            };
            let mut skip = skips[level];
            if cfg.padding == Padding::Valid {
                skip = b.push(
                    format!("decoder.{j}.crop"),
                    Op::CenterCropLike,
                    vec![skip, up],
                );
            }
            if cfg.attention {
                let prefix = format!("decoder.{j}.attention");
                skip = b.attention_gate(&prefix, up, skip, cfg.batch_norm);
            }
            let cat = b.push(format!("decoder.{j}.concat"), Op::Concat, vec![skip, up]);
            let (mid, out) = match cfg.upsampling {
                Upsampling::Transposed => (skip_width, skip_width),
                Upsampling::Bilinear if level == 0 => (skip_width, skip_width),
                Upsampling::Bilinear => (skip_width, skip_width / 2),
            };
            x = b.double_conv(&format!("decoder.{j}.conv"), cat, mid, out, cfg);
        }
        let head = Op::Conv2d {
            in_channels: b.nodes[x].channels,
            out_channels: cfg.out_channels,
            kernel: 1,
            padding: 0,
            bias: true,
        };
        b.push("head".into(), head, vec![x]);
        Ok(Graph {
            config: cfg.clone(),
            nodes: b.nodes,
        })
    }

    pub fn output(&self) -> NodeId {
        self.nodes.len() - 1
    }

    /// Every `state_dict` tensor in graph order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for (id, node) in self.nodes.iter().enumerate() {
            for (kind, shape) in node.param_kinds() {
                out.push(ParamSpec {
                    name: format!("{}.{}", node.name, kind.suffix()),
                    node: id,
                    kind,
                    shape,
                });
            }
        }
        out
    }

    /// Number of trainable scalars (what PyTorch's `sum(p.numel() for p in m.parameters())` counts).
    pub fn num_parameters(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.kind.is_trainable())
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Spatial size of every node's output for an input of `h x w`, or an error
    /// naming the nearest sizes this network accepts.
    pub fn spatial_sizes(&self, h: usize, w: usize) -> Result<Vec<(usize, usize)>> {
        match (self.infer_sizes(h), self.infer_sizes(w)) {
            (Ok(hs), Ok(ws)) => Ok(hs.into_iter().zip(ws).collect()),
            _ => Err(SpecError::InvalidInputSize {
                height: h,
                width: w,
                reason: match self.config.padding {
                    Padding::Same => format!(
                        "`same` padding needs height and width divisible by {}",
                        self.config.size_multiple()
                    ),
                    Padding::Valid => "`valid` padding needs every max-pool input to be even \
                                       and every feature map non-empty"
                        .to_string(),
                },
                nearest_height: self.nearest_sizes(h),
                nearest_width: self.nearest_sizes(w),
            }),
        }
    }

    /// Output `(height, width)` for an input of `h x w`.
    pub fn output_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        Ok(self.spatial_sizes(h, w)?[self.output()])
    }

    /// The closest accepted sizes below and above `n` (either may be absent).
    pub fn nearest_sizes(&self, n: usize) -> (Option<usize>, Option<usize>) {
        let below = (1..=n).rev().find(|&s| self.infer_sizes(s).is_ok());
        let above = (n..n + 4096).find(|&s| self.infer_sizes(s).is_ok());
        (below, above)
    }

    /// One spatial axis through the graph; `Err(())` when the size is not accepted.
    fn infer_sizes(&self, n: usize) -> std::result::Result<Vec<usize>, ()> {
        if self.config.padding == Padding::Same && !n.is_multiple_of(self.config.size_multiple()) {
            return Err(());
        }
        let mut sizes: Vec<usize> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let first = node.inputs.first().map(|&i| sizes[i]);
            let s = match node.op {
                Op::Input => n,
                Op::Conv2d {
                    kernel, padding, ..
                } => (first.ok_or(())? + 2 * padding)
                    .checked_sub(kernel - 1)
                    .ok_or(())?,
                Op::MaxPool2x2 => {
                    let s = first.ok_or(())?;
                    if s % 2 != 0 {
                        return Err(());
                    }
                    s / 2
                }
                Op::ConvTranspose2x2 { .. } | Op::UpsampleBilinear2x { .. } => first.ok_or(())? * 2,
                Op::CenterCropLike => {
                    let target = sizes[node.inputs[1]];
                    if target > first.ok_or(())? {
                        return Err(());
                    }
                    target
                }
                Op::Concat | Op::Add | Op::MulBroadcastChannels => {
                    let s = first.ok_or(())?;
                    if node.inputs.iter().any(|&i| sizes[i] != s) {
                        return Err(());
                    }
                    s
                }
                _ => first.ok_or(())?,
            };
            if s == 0 {
                return Err(());
            }
            sizes.push(s);
        }
        Ok(sizes)
    }
}

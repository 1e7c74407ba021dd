//! The op-by-op lowering: every node of the architecture description becomes
//! ONNX nodes, initializers and `value_info`, named after the graph.

use std::collections::HashMap;

use tract_onnx::pb::{NodeProto, TensorProto};
use unet_models::arch::{Graph, NodeId, Op};
use unet_models::candle_core::{DType, Tensor};
use unet_models::config::Padding;
use unet_models::layers::BN_EPS;
use unet_models::Preprocessing;

use super::{ExportOptions, Head, INPUT_NAME};
use crate::error::{ExportError, Result};
use crate::onnx::{self, Attr, Dim, Elem};

pub(super) struct Lowering<'a> {
    pub(super) graph: &'a Graph,
    pub(super) weights: &'a HashMap<String, Tensor>,
    pub(super) opts: &'a ExportOptions,
    /// Element type of activations inside the network.
    pub(super) act: Elem,
    pub(super) nodes: Vec<NodeProto>,
    pub(super) initializers: Vec<TensorProto>,
    pub(super) value_info: Vec<tract_onnx::pb::ValueInfoProto>,
    /// Names of shared constants already emitted.
    pub(super) shared: Vec<&'static str>,
    pub(super) spatial: Vec<(Dim, Dim)>,
}

impl Lowering<'_> {
    /// Batch of an intermediate value (see [`spatial_dims`] for why unnamed).
    fn batch_dim(&self) -> Dim {
        match self.opts.input.batch {
            Some(n) => Dim::Fixed(n),
            None => Dim::Unknown,
        }
    }

    fn dims(&self, id: NodeId, channels: usize) -> Vec<Dim> {
        let (h, w) = self.spatial[id].clone();
        vec![self.batch_dim(), Dim::Fixed(channels), h, w]
    }

    fn f32_weight(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .weights
            .get(name)
            .ok_or_else(|| ExportError::MissingWeight { name: name.into() })?;
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    fn push_init(&mut self, name: &str, dims: &[usize], data: &[f32], elem: Elem) {
        self.initializers
            .push(onnx::tensor_f32(name, dims, data, elem));
    }

    /// Emits a shared constant once.
    fn shared_i64(&mut self, name: &'static str, data: &[i64]) -> &'static str {
        if !self.shared.contains(&name) {
            self.shared.push(name);
            self.initializers
                .push(onnx::tensor_i64(name, &[data.len()], data));
        }
        name
    }

    fn shared_f32(&mut self, name: &'static str, data: &[f32]) -> &'static str {
        if !self.shared.contains(&name) {
            self.shared.push(name);
            self.initializers
                .push(onnx::tensor_f32(name, &[data.len()], data, Elem::F32));
        }
        name
    }

    fn emit(&mut self, node: NodeProto, doc: &str) {
        let mut node = node;
        node.doc_string = doc.to_string();
        self.nodes.push(node);
    }

    /// Records the shape of an activation between nodes.
    fn info(&mut self, name: &str, elem: Elem, dims: Vec<Dim>) {
        self.value_info
            .push(onnx::value_info(name, elem, &dims, ""));
    }

    /// Emits the whole graph; returns its inputs and outputs.
    pub(super) fn lower(
        &mut self,
        pre: &Preprocessing,
    ) -> Result<(
        Vec<tract_onnx::pb::ValueInfoProto>,
        Vec<tract_onnx::pb::ValueInfoProto>,
    )> {
        let graph = self.graph;
        let n = graph.nodes.len();
        let mut consumers: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for (id, node) in graph.nodes.iter().enumerate() {
            for &i in &node.inputs {
                consumers[i].push(id);
            }
        }
        let last = graph.output();
        let mut tensor_of: Vec<String> = vec![String::new(); n];
        // BatchNorm -> the convolution it was folded into.
        let mut folded: HashMap<NodeId, NodeId> = HashMap::new();

        for (id, node) in graph.nodes.iter().enumerate() {
            let input = |k: usize| tensor_of[node.inputs[k]].clone();
            // The network's last tensor becomes `logits` unless a Cast follows it.
            let out = if id == last && !self.opts.fp16 {
                "logits".to_string()
            } else {
                node.name.clone()
            };
            let mut emitted = true;
            match &node.op {
                Op::Input => {
                    tensor_of[id] = self.lower_input(pre, id)?;
                    continue;
                }
                Op::Conv2d {
                    in_channels,
                    out_channels,
                    kernel,
                    padding,
                    bias,
                } => {
                    let (o, i, k) = (*out_channels, *in_channels, *kernel);
                    let mut w = self.f32_weight(&format!("{}.weight", node.name))?;
                    let mut b = if *bias {
                        Some(self.f32_weight(&format!("{}.bias", node.name))?)
                    } else {
                        None
                    };
                    let bn = match consumers[id].as_slice() {
                        [c] if self.opts.fold_bn
                            && matches!(graph.nodes[*c].op, Op::BatchNorm2d { .. }) =>
                        {
                            Some(*c)
                        }
                        _ => None,
                    };
                    let mut doc = format!("{k}x{k} convolution, {i} -> {o} channels");
                    if let Some(bn) = bn {
                        let bn_name = &graph.nodes[bn].name;
                        b = Some(self.fold(bn_name, &mut w, b.as_deref(), o)?);
                        folded.insert(bn, id);
                        doc.push_str(&format!(", BatchNorm `{bn_name}` folded in"));
                    }
                    let wname = format!("{}.weight", node.name);
                    self.push_init(&wname, &[o, i, k, k], &w, self.act);
                    drop(w);
                    let mut ins = vec![input(0), wname];
                    if let Some(b) = b {
                        let bname = format!("{}.bias", node.name);
                        self.push_init(&bname, &[o], &b, self.act);
                        ins.push(bname);
                    }
                    let p = *padding as i64;
                    let k = k as i64;
                    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                    let conv = onnx::node(
                        "Conv",
                        &node.name,
                        &ins,
                        &[&out],
                        vec![
                            ("kernel_shape", Attr::Ints(vec![k, k])),
                            ("pads", Attr::Ints(vec![p, p, p, p])),
                            ("strides", Attr::Ints(vec![1, 1])),
                            ("dilations", Attr::Ints(vec![1, 1])),
                            ("group", Attr::Int(1)),
                        ],
                    );
                    self.emit(conv, &doc);
                }
                Op::BatchNorm2d { channels } => {
                    if let Some(&conv) = folded.get(&id) {
                        tensor_of[id] = tensor_of[conv].clone();
                        emitted = false;
                    } else {
                        let c = *channels;
                        let mut ins = vec![input(0)];
                        for suffix in ["weight", "bias", "running_mean", "running_var"] {
                            let name = format!("{}.{suffix}", node.name);
                            let data = self.f32_weight(&name)?;
                            self.push_init(&name, &[c], &data, self.act);
                            ins.push(name);
                        }
                        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                        let bn = onnx::node(
                            "BatchNormalization",
                            &node.name,
                            &ins,
                            &[&out],
                            vec![
                                ("epsilon", Attr::Float(BN_EPS as f32)),
                                // ONNX momentum weighs the old statistic: 1 - PyTorch's 0.1.
                                ("momentum", Attr::Float(0.9)),
                            ],
                        );
                        self.emit(bn, "BatchNorm (eval: running statistics)");
                    }
                }
                Op::Relu => {
                    let x = input(0);
                    self.emit(onnx::node("Relu", &node.name, &[&x], &[&out], vec![]), "");
                }
                Op::Sigmoid => {
                    let x = input(0);
                    self.emit(
                        onnx::node("Sigmoid", &node.name, &[&x], &[&out], vec![]),
                        "",
                    );
                }
                Op::MaxPool2x2 => {
                    let x = input(0);
                    let pool = onnx::node(
                        "MaxPool",
                        &node.name,
                        &[&x],
                        &[&out],
                        vec![
                            ("kernel_shape", Attr::Ints(vec![2, 2])),
                            ("strides", Attr::Ints(vec![2, 2])),
                        ],
                    );
                    self.emit(pool, "2x2 max pooling, stride 2");
                }
                Op::Dropout { .. } => {
                    // Identity at inference; omitted rather than exported as Dropout.
                    tensor_of[id] = input(0);
                    emitted = false;
                }
                Op::ConvTranspose2x2 {
                    in_channels,
                    out_channels,
                } => {
                    let (i, o) = (*in_channels, *out_channels);
                    let wname = format!("{}.weight", node.name);
                    let bname = format!("{}.bias", node.name);
                    let w = self.f32_weight(&wname)?;
                    self.push_init(&wname, &[i, o, 2, 2], &w, self.act);
                    let b = self.f32_weight(&bname)?;
                    self.push_init(&bname, &[o], &b, self.act);
                    let x = input(0);
                    let up = onnx::node(
                        "ConvTranspose",
                        &node.name,
                        &[&x, &wname, &bname],
                        &[&out],
                        vec![
                            ("kernel_shape", Attr::Ints(vec![2, 2])),
                            ("strides", Attr::Ints(vec![2, 2])),
                        ],
                    );
                    self.emit(
                        up,
                        &format!("2x2 transposed convolution, stride 2, {i} -> {o} channels"),
                    );
                }
                Op::UpsampleBilinear2x { align_corners } => {
                    let scales = self.shared_f32("upsample.scales", &[1.0, 1.0, 2.0, 2.0]);
                    let mode = if *align_corners {
                        "align_corners"
                    } else {
                        // Equals PyTorch's align_corners=False for a scale factor of 2.
                        "half_pixel"
                    };
                    let x = input(0);
                    let resize = onnx::node(
                        "Resize",
                        &node.name,
                        &[&x, "", scales],
                        &[&out],
                        vec![
                            ("mode", Attr::Str("linear")),
                            ("coordinate_transformation_mode", Attr::Str(mode)),
                        ],
                    );
                    self.emit(resize, &format!("bilinear x2 upsampling, {mode}"));
                }
                Op::CenterCropLike => {
                    self.lower_crop(&node.name, &input(0), &input(1), &out);
                }
                Op::Concat => {
                    let ins: Vec<String> = (0..node.inputs.len()).map(input).collect();
                    let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                    let cat = onnx::node(
                        "Concat",
                        &node.name,
                        &ins,
                        &[&out],
                        vec![("axis", Attr::Int(1))],
                    );
                    self.emit(cat, "skip connection and upsampled features along channels");
                }
                Op::Add => {
                    let (a, b) = (input(0), input(1));
                    self.emit(
                        onnx::node("Add", &node.name, &[&a, &b], &[&out], vec![]),
                        "",
                    );
                }
                Op::MulBroadcastChannels => {
                    let (a, b) = (input(0), input(1));
                    self.emit(
                        onnx::node("Mul", &node.name, &[&a, &b], &[&out], vec![]),
                        "skip gated by the attention coefficients [N,1,H,W]",
                    );
                }
            }
            if emitted {
                tensor_of[id] = out.clone();
                if id != last || self.opts.fp16 {
                    let dims = self.dims(id, node.channels);
                    self.info(&out, self.act, dims);
                }
            }
        }
        let network_out = tensor_of[last].clone();
        self.lower_head(&network_out)
    }

    /// Graph input, optional normalisation and the cast to f16; returns the
    /// tensor the first layer reads.
    fn lower_input(&mut self, pre: &Preprocessing, id: NodeId) -> Result<String> {
        let c = self.graph.config.in_channels;
        let mut x = INPUT_NAME.to_string();
        if self.opts.normalize_in_graph {
            self.push_init("input.mean", &[1, c, 1, 1], &pre.mean, Elem::F32);
            self.push_init("input.std", &[1, c, 1, 1], &pre.std, Elem::F32);
            self.emit(
                onnx::node(
                    "Sub",
                    "input.centre",
                    &[INPUT_NAME, "input.mean"],
                    &["input.centred"],
                    vec![],
                ),
                "subtract the per-channel mean of `unet.preprocessing`",
            );
            self.emit(
                onnx::node(
                    "Div",
                    "input.normalize",
                    &["input.centred", "input.std"],
                    &["input.normalized"],
                    vec![],
                ),
                "divide by the per-channel std of `unet.preprocessing`",
            );
            let dims = self.dims(id, c);
            self.info("input.centred", Elem::F32, dims.clone());
            self.info("input.normalized", Elem::F32, dims);
            x = "input.normalized".into();
        }
        if self.opts.fp16 {
            self.emit(
                onnx::node(
                    "Cast",
                    "input.to_f16",
                    &[&x],
                    &["input.f16"],
                    vec![("to", Attr::Int(Elem::F16.data_type() as i64))],
                ),
                "",
            );
            let dims = self.dims(id, c);
            self.info("input.f16", Elem::F16, dims);
            x = "input.f16".into();
        }
        Ok(x)
    }

    /// BatchNorm folded into the preceding convolution: `w' = w * s`,
    /// `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`, in f64.
    /// Convolutions before a BatchNorm have no bias; the folded one gets one.
    fn fold(
        &self,
        bn: &str,
        w: &mut [f32],
        b: Option<&[f32]>,
        out_channels: usize,
    ) -> Result<Vec<f32>> {
        let gamma = self.f32_weight(&format!("{bn}.weight"))?;
        let beta = self.f32_weight(&format!("{bn}.bias"))?;
        let mean = self.f32_weight(&format!("{bn}.running_mean"))?;
        let var = self.f32_weight(&format!("{bn}.running_var"))?;
        let per_out = w.len() / out_channels.max(1);
        let mut bias = Vec::with_capacity(out_channels);
        for o in 0..out_channels {
            let s = gamma[o] as f64 / (var[o] as f64 + BN_EPS).sqrt();
            for v in &mut w[o * per_out..(o + 1) * per_out] {
                *v = (*v as f64 * s) as f32;
            }
            let b0 = b.map_or(0.0, |b| b[o] as f64);
            bias.push(((b0 - mean[o] as f64) * s + beta[o] as f64) as f32);
        }
        Ok(bias)
    }

    /// Central crop of `skip` to the spatial size of `target`, with the offsets
    /// computed from the runtime shapes so dynamic H/W works:
    /// `start = (skip_hw - target_hw) / 2`, `end = start + target_hw`.
    fn lower_crop(&mut self, name: &str, skip: &str, target: &str, out: &str) {
        let hw = self.shared_i64("crop.hw_axes", &[2, 3]);
        let two = self.shared_i64("crop.two", &[2]);
        let t = |s: &str| format!("{name}.{s}");
        let steps: [CropStep; 7] = [
            ("Shape", vec![skip.into()], t("skip_shape"), vec![]),
            ("Shape", vec![target.into()], t("target_shape"), vec![]),
            (
                "Gather",
                vec![t("skip_shape"), hw.into()],
                t("skip_hw"),
                vec![("axis", Attr::Int(0))],
            ),
            (
                "Gather",
                vec![t("target_shape"), hw.into()],
                t("target_hw"),
                vec![("axis", Attr::Int(0))],
            ),
            (
                "Sub",
                vec![t("skip_hw"), t("target_hw")],
                t("excess"),
                vec![],
            ),
            ("Div", vec![t("excess"), two.into()], t("starts"), vec![]),
            ("Add", vec![t("starts"), t("target_hw")], t("ends"), vec![]),
        ];
        for (op, ins, o, attrs) in steps {
            let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
            let node = onnx::node(op, &o, &ins, &[&o], attrs);
            self.emit(node, "");
        }
        let slice = onnx::node(
            "Slice",
            name,
            &[skip, &t("starts"), &t("ends"), hw],
            &[out],
            vec![],
        );
        self.emit(slice, "central crop of the skip to the upsampled size");
    }

    /// Cast back to f32 and the output head; returns the graph inputs and outputs.
    fn lower_head(
        &mut self,
        network_out: &str,
    ) -> Result<(
        Vec<tract_onnx::pb::ValueInfoProto>,
        Vec<tract_onnx::pb::ValueInfoProto>,
    )> {
        let last = self.graph.output();
        let cfg = &self.graph.config;
        if self.opts.fp16 {
            self.emit(
                onnx::node(
                    "Cast",
                    "logits.to_f32",
                    &[network_out],
                    &["logits"],
                    vec![("to", Attr::Int(Elem::F32.data_type() as i64))],
                ),
                "",
            );
        }
        let head = self.opts.head;
        let out_name = head.output_name();
        let mut out_channels = cfg.out_channels;
        match head {
            Head::Logits => {}
            Head::Sigmoid => self.emit(
                onnx::node("Sigmoid", "head.sigmoid", &["logits"], &[out_name], vec![]),
                "",
            ),
            Head::Softmax => self.emit(
                onnx::node(
                    "Softmax",
                    "head.softmax",
                    &["logits"],
                    &[out_name],
                    vec![("axis", Attr::Int(1))],
                ),
                "",
            ),
            Head::Argmax => {
                out_channels = 1;
                self.emit(
                    onnx::node(
                        "ArgMax",
                        "head.argmax",
                        &["logits"],
                        &["labels.i64"],
                        vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(1))],
                    ),
                    "",
                );
                self.emit(
                    onnx::node(
                        "Cast",
                        "head.labels_to_f32",
                        &["labels.i64"],
                        &[out_name],
                        vec![("to", Attr::Int(Elem::F32.data_type() as i64))],
                    ),
                    "class indices as f32, the element type every consumer reads",
                );
                let mut dims = self.dims(last, 1);
                dims[1] = Dim::Fixed(1);
                self.info("labels.i64", Elem::I64, dims);
            }
        }
        if head != Head::Logits {
            let dims = self.dims(last, cfg.out_channels);
            self.info("logits", Elem::F32, dims);
        }
        // The graph's own input and output name their symbolic axes.
        let batch = match self.opts.input.batch {
            Some(n) => Dim::Fixed(n),
            None => Dim::Param("batch".into()),
        };
        let (h, w) = match self.opts.input.spatial {
            Some((h, w)) => (Dim::Fixed(h), Dim::Fixed(w)),
            None => (Dim::Param("height".into()), Dim::Param("width".into())),
        };
        let input = onnx::value_info(
            INPUT_NAME,
            Elem::F32,
            &[
                batch.clone(),
                Dim::Fixed(cfg.in_channels),
                h.clone(),
                w.clone(),
            ],
            "NCHW image batch",
        );
        let (oh, ow) = match (&self.spatial[last], cfg.padding) {
            ((Dim::Unknown, Dim::Unknown), Padding::Same) => (h, w),
            ((Dim::Unknown, Dim::Unknown), Padding::Valid) => (
                Dim::Param("out_height".into()),
                Dim::Param("out_width".into()),
            ),
            (hw, _) => hw.clone(),
        };
        let output = onnx::value_info(
            out_name,
            Elem::F32,
            &[batch, Dim::Fixed(out_channels), oh, ow],
            "NCHW per-pixel output",
        );
        Ok((vec![input], vec![output]))
    }
}

/// One node of the crop subgraph: op type, inputs, output, attributes.
type CropStep<'a> = (&'a str, Vec<String>, String, Vec<(&'a str, Attr)>);

//! The rewrite against tract's own plan: every fused op computes what the
//! nodes it replaces compute.

use tract_core::ops::cnn::PoolSpec;
use tract_core::ops::math::max;
use tract_core::runtime::RunOptions;
use tract_linalg::multithread::Executor;
use unet_kernels::product;

use super::*;

/// A stride-1 f32 NCHW convolution with padding (top, left, bottom, right).
fn conv(cin: usize, cout: usize, (kh, kw): (usize, usize), [t, l, b, r]: [usize; 4]) -> Conv {
    Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec!(kh, kw),
            padding: PaddingSpec::Explicit(tvec!(t, l), tvec!(b, r)),
            dilations: None,
            strides: None,
            input_channels: cin,
            output_channels: cout,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    }
}

/// Values from a fixed pseudo-random sequence in [-0.5, 0.5).
fn values(len: usize, mut seed: u32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

const N: usize = 2;
/// Odd, so the pooling drops a last row.
const H: usize = 65;
/// So the first conv's tiles are 7 rows, which pooling must round to 8.
const W: usize = 40;

/// `relu(conv 3x3 same (concat(a [N, 8, H, W], b [N, 16, H, W])))`, then a
/// 3x3 `valid` conv, then a 2x3 conv padded unevenly, both with bias; the
/// 2x2 max-pooling of the first conv's output is a second model output.
/// With `concat_out`, the concatenation is a third.
/// (input channels, output channels, kernel, padding) of a test convolution.
type Layer = (usize, usize, (usize, usize), [usize; 4]);

/// A convolution per layer (cin, cout, kernel, padding) after `wire`,
/// with bias (weights from seeds `seed + i`, biases `seed + 10 + i`);
/// the first followed by a ReLU and a 2x2 max-pooling. Returns the last
/// convolution's output and the pooling's.
fn conv_chain(
    model: &mut TypedModel,
    mut wire: OutletId,
    layers: &[Layer],
    seed: u32,
) -> TractResult<(OutletId, OutletId)> {
    let mut pooled = wire;
    for (i, &(cin, cout, (kh, kw), padding)) in layers.iter().enumerate() {
        let seed = seed + i as u32;
        let kernel = tract_ndarray::Array4::from_shape_vec(
            (cout, cin, kh, kw),
            values(cout * cin * kh * kw, seed),
        )?;
        let kernel = model.add_const(format!("w{i}"), Tensor::from(kernel))?;
        let bias = tract_ndarray::Array1::from_vec(values(cout, seed + 10));
        let bias = model.add_const(format!("b{i}"), Tensor::from(bias))?;
        let op = conv(cin, cout, (kh, kw), padding);
        wire = model.wire_node(format!("conv{i}"), op, &[wire, kernel, bias])?[0];
        if i == 0 {
            let zero = model.add_const("zero", Tensor::zero::<f32>(&[1, 1, 1, 1])?)?;
            wire = model.wire_node("relu", max(), &[wire, zero])?[0];
            let pool = MaxPool {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: tvec!(2, 2),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: Some(tvec!(2, 2)),
                    input_channels: cout,
                    output_channels: cout,
                },
                with_index_outputs: None,
            };
            pooled = model.wire_node("pool", pool, &[wire])?[0];
        }
    }
    Ok((wire, pooled))
}

fn model(concat_out: bool) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let a = model.add_source("a", f32::fact([N, 8, H, W]))?;
    let b = model.add_source("b", f32::fact([N, 16, H, W]))?;
    let concat = model.wire_node("concat", TypedConcat { axis: 1 }, &[a, b])?[0];
    let layers = [
        (24, 16, (3, 3), [1, 1, 1, 1]),
        (16, 24, (3, 3), [0, 0, 0, 0]),
        (24, 8, (2, 3), [1, 0, 0, 2]),
    ];
    let (wire, pooled) = conv_chain(&mut model, concat, &layers, 0)?;
    let mut outputs = vec![wire, pooled];
    if concat_out {
        outputs.push(concat);
    }
    model.select_output_outlets(&outputs)?;
    Ok(model)
}

fn op_names(model: &TypedModel) -> Vec<String> {
    model
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect()
}

fn count(model: &TypedModel, op: &str) -> usize {
    op_names(model).iter().filter(|n| *n == op).count()
}

/// The outputs of `model` on fixed inputs, one after the other, with `threads` threads.
fn run(model: TypedModel, threads: usize) -> TractResult<Vec<f32>> {
    let a = tract_ndarray::Array4::from_shape_vec((N, 8, H, W), values(N * 8 * H * W, 20))?;
    let b = tract_ndarray::Array4::from_shape_vec((N, 16, H, W), values(N * 16 * H * W, 21))?;
    run_on(model, tvec!(Tensor::from(a), Tensor::from(b)), threads)
}

/// The outputs of `model` on `inputs`, one after the other, with `threads` threads.
fn run_on(model: TypedModel, inputs: TVec<Tensor>, threads: usize) -> TractResult<Vec<f32>> {
    let executor = if threads > 1 {
        Executor::multithread(threads)
    } else {
        Executor::SingleThread
    };
    let options = RunOptions {
        executor: Some(executor),
        ..RunOptions::default()
    };
    let plan = model.into_runnable_with_options(&options)?;
    let out = plan.run(inputs.into_iter().map(TValue::from).collect())?;
    let mut values = vec![];
    for output in &out {
        values.extend(output.to_plain_array_view::<f32>()?.iter().copied());
    }
    Ok(values)
}

fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn tiled_convs_compute_what_tract_computes() -> TractResult<()> {
    let expected = run(model(false)?.into_optimized()?, 1)?;
    // The 2x3 conv's last output column sees only padding: its value is the bias.
    assert!(expected.iter().any(|v| *v != 0.0));
    for (threads, winograd) in [(1, false), (2, false), (1, true), (2, true)] {
        let ours = optimize_with(model(false)?, threads, winograd)?;
        assert_eq!(count(&ours, "TiledConv"), 3, "{:?}", op_names(&ours));
        // The two 3x3 convolutions (one over a concatenation, pooled; one
        // unpadded, to an odd height) by Winograd, the 2x3 one by im2col.
        let by_winograd = ours
            .nodes
            .iter()
            .filter_map(|n| n.op_as::<TiledConv>())
            .filter(|conv| conv.winograd.is_some())
            .count();
        assert_eq!(by_winograd, if winograd { 2 } else { 0 });
        // The concatenation, the ReLU and the max-pooling are folded in.
        assert_eq!(count(&ours, "Concat"), 0, "{:?}", op_names(&ours));
        assert!(
            !op_names(&ours).iter().any(|n| n.contains("Max")),
            "{:?}",
            op_names(&ours)
        );
        let err = max_abs_difference(&run(ours, threads)?, &expected);
        assert!(
            err < 1e-4,
            "{threads} threads, winograd {winograd}: max abs difference {err}"
        );
    }
    Ok(())
}

/// f32 FMAs of a whole graph, counted as the session counts them.
fn fmas(model: &TypedModel) -> TractResult<i64> {
    Ok(super::super::fmas(model) as i64)
}

#[test]
fn the_runtimes_ops_report_the_fmas_tracts_ops_report() -> TractResult<()> {
    // Profiles divide time by these counts: TiledConv and TiledDeconv
    // must count what tract's own Conv and Deconv count for the same graph.
    let convs = fmas(&model(false)?.into_decluttered()?)?;
    assert!(convs > 0);
    assert_eq!(fmas(&optimize(model(false)?, 2)?)?, convs);
    // tract's Deconv reports none: with stride = kernel each output
    // element takes one tap per input channel.
    let plain = deconvs()?.into_decluttered()?;
    let mut expected = 0;
    for node in plain.nodes().iter().filter(|n| n.op_is::<Deconv>()) {
        let channels = plain.node_input_facts(node.id)?[0].shape[1].to_i64()?;
        let output = plain.node_output_facts(node.id)?[0]
            .shape
            .volume()
            .to_i64()?;
        expected += output * channels;
    }
    assert_eq!(
        plain.nodes().iter().filter(|n| n.op_is::<Deconv>()).count(),
        2
    );
    assert_eq!(fmas(&optimize(deconvs()?, 2)?)?, expected);
    Ok(())
}

#[test]
fn a_concatenation_read_elsewhere_is_kept() -> TractResult<()> {
    let ours = optimize(model(true)?, 2)?;
    assert_eq!(count(&ours, "TiledConv"), 3, "{:?}", op_names(&ours));
    assert_eq!(count(&ours, "Concat"), 1, "{:?}", op_names(&ours));
    let expected = run(model(true)?.into_optimized()?, 1)?;
    let err = max_abs_difference(&run(ours, 2)?, &expected);
    assert!(err < 1e-4, "max abs difference {err}");
    Ok(())
}

/// `x [N, 24, 64, 61]` -> transposed conv, kernel and stride 2x2 (24 -> 16)
/// -> transposed conv, kernel and stride 2x3 (16 -> 8), both with bias.
/// 61 columns: no tile of rows is whole vectors of pixels.
fn deconvs() -> TractResult<TypedModel> {
    deconv_chain([N, 24, 64, 61], &[(24, 16, (2, 2)), (16, 8, (2, 3))])
}

/// Transposed convolutions with bias, kernel = stride, one after the other.
fn deconv_chain(
    input: [usize; 4],
    layers: &[(usize, usize, (usize, usize))],
) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let mut wire = model.add_source("x", f32::fact(input))?;
    for (i, &(cin, cout, (kh, kw))) in layers.iter().enumerate() {
        let kernel = tract_ndarray::Array4::from_shape_vec(
            (cout, cin, kh, kw),
            values(cout * cin * kh * kw, 30 + i as u32),
        )?;
        let kernel = model.add_const(format!("w{i}"), Tensor::from(kernel))?;
        let bias = tract_ndarray::Array1::from_vec(values(cout, 40 + i as u32));
        let bias = model.add_const(format!("b{i}"), Tensor::from(bias))?;
        let op = Deconv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(kh, kw),
                padding: PaddingSpec::Valid,
                dilations: None,
                strides: Some(tvec!(kh, kw)),
                input_channels: cin,
                output_channels: cout,
            },
            kernel_format: KernelFormat::OIHW,
            adjustments: tvec!(0, 0),
            group: 1,
        };
        wire = model.wire_node(format!("deconv{i}"), op, &[wire, kernel, bias])?[0];
    }
    model.select_output_outlets(&[wire])?;
    Ok(model)
}

#[test]
fn tiled_deconvs_compute_what_tract_computes() -> TractResult<()> {
    check_tiled_deconvs(deconvs, [N, 24, 64, 61], [N, 8, 256, 366])
}

#[test]
fn deep_few_row_deconvs_are_tiled_too() -> TractResult<()> {
    // A bottleneck's up-sampling: 5 input rows, so tiles of one row for two
    // threads; deeper than the unpacked products go (gemm), then shallow.
    let deep = product::max_depth() + 20;
    let model = || deconv_chain([1, deep, 5, 40], &[(deep, 24, (2, 2)), (24, 8, (2, 2))]);
    check_tiled_deconvs(model, [1, deep, 5, 40], [1, 8, 20, 160])
}

#[test]
fn deconvs_of_page_sized_planes_are_tiled_too() -> TractResult<()> {
    // Planes of 32x32 and 64x64 pixels: the products copy the input rows
    // into panels first (rows of V a multiple of 1 KiB apart).
    let model = || deconv_chain([1, 24, 32, 32], &[(24, 16, (2, 2)), (16, 8, (2, 2))]);
    check_tiled_deconvs(model, [1, 24, 32, 32], [1, 8, 128, 128])
}

/// Runs `model()` (two deconvolutions) on tract's own ops and on ours, with
/// 1 and 2 threads: both must become [`TiledDeconv`]s and compute the same.
fn check_tiled_deconvs(
    model: impl Fn() -> TractResult<TypedModel>,
    input: [usize; 4],
    output: [usize; 4],
) -> TractResult<()> {
    let x = tract_ndarray::Array4::from_shape_vec(
        (input[0], input[1], input[2], input[3]),
        values(input.iter().product(), 50),
    )?;
    let expected = model()?
        .into_optimized()?
        .into_runnable()?
        .run(tvec!(Tensor::from(x.clone()).into()))?;
    let expected = expected[0].to_plain_array_view::<f32>()?;
    let (shape, expected): (Vec<usize>, Vec<f32>) = (
        expected.shape().to_vec(),
        expected.iter().copied().collect(),
    );
    assert_eq!(shape, output);
    for threads in [1, 2] {
        let ours = optimize(model()?, threads)?;
        assert_eq!(count(&ours, "TiledDeconv"), 2, "{:?}", op_names(&ours));
        let options = RunOptions {
            executor: Some(if threads > 1 {
                Executor::multithread(threads)
            } else {
                Executor::SingleThread
            }),
            ..RunOptions::default()
        };
        let out = ours
            .into_runnable_with_options(&options)?
            .run(tvec!(Tensor::from(x.clone()).into()))?;
        let out: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect();
        let err = max_abs_difference(&out, &expected);
        assert!(err < 1e-4, "{threads} threads: max abs difference {err}");
    }
    Ok(())
}

#[test]
fn deep_low_resolution_convs_run_by_winograd_on_all_threads() -> TractResult<()> {
    // Too few pixels for one-thread tiles: 40 channels at 9x7, to an odd
    // size, ReLU and pooled, then an unpadded conv.
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([1, 40, 9, 7]))?;
    let layers = [(40, 24, (3, 3), [1; 4]), (24, 16, (3, 3), [0; 4])];
    for &(cin, ..) in &layers {
        assert!(!tiled_conv::suits(cin * 9, 1, (9, 7), 2));
    }
    let (wire, pooled) = conv_chain(&mut model, x, &layers, 30)?;
    model.select_output_outlets(&[wire, pooled])?;
    let input = || -> TractResult<TVec<Tensor>> {
        let x = tract_ndarray::Array4::from_shape_vec((1, 40, 9, 7), values(40 * 63, 50))?;
        Ok(tvec!(Tensor::from(x)))
    };
    let expected = run_on(model.clone().into_optimized()?, input()?, 1)?;
    for threads in [1, 2] {
        let ours = optimize_with(model.clone(), threads, true)?;
        assert_eq!(count(&ours, "TiledConv"), 2, "{:?}", op_names(&ours));
        let err = max_abs_difference(&run_on(ours, input()?, threads)?, &expected);
        assert!(err < 1e-4, "{threads} threads: max abs difference {err}");
        let im2col = optimize_with(model.clone(), threads, false)?;
        assert_eq!(count(&im2col, "TiledConv"), 0, "{:?}", op_names(&im2col));
    }
    Ok(())
}

#[test]
fn deep_low_resolution_convs_stay_with_tract() {
    // 64->64 at 256x256: 4-row tiles of 1024 pixels, 64 per image.
    assert!(tiled_conv::suits(64 * 9, 1, (256, 256), 2));
    // 512->512 at 32x32: one-row tiles of 32 pixels.
    assert!(!tiled_conv::suits(512 * 9, 1, (32, 32), 2));
    // 16 channels at 16x16: one 256-pixel tile, too few for 2 threads.
    assert!(!tiled_conv::suits(16 * 9, 1, (16, 16), 2));
    assert!(tiled_conv::suits(16 * 9, 4, (16, 16), 1));
}

/// Attention U-Net's gate, `x · σ(ψ(relu(W_g g + W_x x)))` (1x1 convolutions
/// with bias), over g `[n, cg, h, w]` and x `[n, cx, h, w]`; with
/// `relu_out`, the ReLU's output is a model output too.
fn attention_gate([n, cg, cx, inter, h, w]: [usize; 6], relu_out: bool) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let g = model.add_source("g", f32::fact([n, cg, h, w]))?;
    let x = model.add_source("x", f32::fact([n, cx, h, w]))?;
    fn pointwise(
        model: &mut TypedModel,
        name: &str,
        input: OutletId,
        (cin, cout): (usize, usize),
        seed: u32,
    ) -> TractResult<OutletId> {
        let kernel =
            tract_ndarray::Array4::from_shape_vec((cout, cin, 1, 1), values(cout * cin, seed))?;
        let kernel = model.add_const(format!("{name}.w"), Tensor::from(kernel))?;
        let bias = tract_ndarray::Array1::from_vec(values(cout, seed + 1));
        let bias = model.add_const(format!("{name}.b"), Tensor::from(bias))?;
        let op = conv(cin, cout, (1, 1), [0; 4]);
        Ok(model.wire_node(name, op, &[input, kernel, bias])?[0])
    }
    let from_g = pointwise(&mut model, "w_g", g, (cg, inter), 30)?;
    let from_x = pointwise(&mut model, "w_x", x, (cx, inter), 32)?;
    let sum = model.wire_node("add", tract_core::ops::math::add(), &[from_g, from_x])?[0];
    let zero = model.add_const("zero", Tensor::zero::<f32>(&[1, 1, 1, 1])?)?;
    let psi_input = model.wire_node("relu", max(), &[sum, zero])?[0];
    let psi = pointwise(&mut model, "psi", psi_input, (inter, 1), 34)?;
    let attention = model.wire_node("sigmoid", tract_core::ops::nn::sigmoid(), &[psi])?[0];
    let gated = model.wire_node("gate", tract_core::ops::math::mul(), &[x, attention])?[0];
    let mut outputs = vec![gated];
    if relu_out {
        outputs.push(psi_input);
    }
    model.select_output_outlets(&outputs)?;
    Ok(model)
}

#[test]
fn attention_gates_compute_what_tract_computes() -> TractResult<()> {
    // A plane of 7x9 (fewer pixels than a tile, not whole vectors) and one of
    // 65x67 in three tiles of rows per image, whose first two end mid-vector.
    for dims in [[2, 6, 5, 4, 7, 9], [2, 12, 10, 31, 65, 67]] {
        let [n, cg, cx, _, h, w] = dims;
        let inputs = || -> TractResult<TVec<Tensor>> {
            let g =
                tract_ndarray::Array4::from_shape_vec((n, cg, h, w), values(n * cg * h * w, 40))?;
            let x =
                tract_ndarray::Array4::from_shape_vec((n, cx, h, w), values(n * cx * h * w, 41))?;
            Ok(tvec!(Tensor::from(g), Tensor::from(x)))
        };
        let expected = run_on(attention_gate(dims, false)?.into_optimized()?, inputs()?, 1)?;
        assert!(expected.iter().all(|v| v.is_finite()) && expected.iter().any(|&v| v != 0.0));
        for threads in [1, 2] {
            let ours = optimize_with(attention_gate(dims, false)?, threads, true)?;
            assert_eq!(count(&ours, "AttentionGate"), 1, "{:?}", op_names(&ours));
            assert_eq!(count(&ours, "Sigmoid"), 0, "{:?}", op_names(&ours));
            let got = run_on(ours, inputs()?, threads)?;
            let error = max_abs_difference(&expected, &got);
            assert!(
                error < 1e-5,
                "{dims:?}, {threads} threads: max abs difference {error}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_gate_whose_parts_are_read_elsewhere_is_kept() -> TractResult<()> {
    let ours = optimize_with(attention_gate([1, 4, 4, 2, 8, 8], true)?, 1, true)?;
    assert_eq!(count(&ours, "AttentionGate"), 0, "{:?}", op_names(&ours));
    Ok(())
}

#[test]
fn pointwise_convs_compute_what_tract_computes() -> TractResult<()> {
    // A head's 1x1 convolutions after a 3x3 one, on an odd plane whose
    // tiles end mid-vector: 20 -> 3 channels, then 3 -> 1 (the model's output).
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact([N, 20, 9, 7]))?;
    let layers = [
        (20, 20, (3, 3), [1; 4]),
        (20, 3, (1, 1), [0; 4]),
        (3, 1, (1, 1), [0; 4]),
    ];
    let (wire, _) = conv_chain(&mut model, x, &layers, 60)?;
    model.select_output_outlets(&[wire])?;
    let input = || -> TractResult<TVec<Tensor>> {
        let x = tract_ndarray::Array4::from_shape_vec((N, 20, 9, 7), values(N * 20 * 63, 70))?;
        Ok(tvec!(Tensor::from(x)))
    };
    let expected = run_on(model.clone().into_optimized()?, input()?, 1)?;
    assert_eq!(expected.len(), N * 63);
    for threads in [1, 2] {
        let ours = optimize(model.clone(), threads)?;
        assert_eq!(count(&ours, "PointwiseConv"), 2, "{:?}", op_names(&ours));
        let err = max_abs_difference(&run_on(ours, input()?, threads)?, &expected);
        assert!(err < 1e-4, "{threads} threads: max abs difference {err}");
    }
    Ok(())
}

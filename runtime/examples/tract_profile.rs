//! Where tract spends a frame: times every node of the optimised plan and sums
//! by op, the evidence behind the tract/ONNX Runtime latency ratio.
//!
//! `cargo run --release -p unet-runtime --example tract_profile -- MODEL.onnx [SIZE] [RUNS] [THREADS]`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;
use tract_onnx::tract_core::runtime::RunOptions;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: tract_profile MODEL.onnx [SIZE] [RUNS] [THREADS]")?;
    let size: usize = args.next().map_or(Ok(256), |s| s.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let executor = if threads > 1 {
        tract_linalg::multithread::Executor::multithread(threads)
    } else {
        tract_linalg::multithread::Executor::SingleThread
    };
    let options = RunOptions {
        executor: Some(executor),
        ..RunOptions::default()
    };
    if std::env::var_os("PLAIN_TRACT").is_none() {
        unet_runtime::tract_plan::tune_for_this_cpu();
    }
    let shape = [1, 3, size, size];
    let plan = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(&path)?
        .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))?
        .into_typed()?;
    // The runtime's own plan (its CPU tuning and convolution kernels); PLAIN_TRACT=1 for tract's.
    let plan = if std::env::var_os("PLAIN_TRACT").is_some() {
        plan.into_optimized()?
    } else {
        unet_runtime::tract_plan::optimize(plan, threads)?
    }
    .into_runnable_with_options(&options)?;
    let mut state = plan.spawn()?;
    let input: Tensor = tract_ndarray::Array4::<f32>::from_elem(shape, 0.5).into();
    state.run(tvec!(input.clone().into()))?;

    let mut by_op: HashMap<String, (Duration, usize)> = HashMap::new();
    let mut by_node: HashMap<String, Duration> = HashMap::new();
    let started = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(
            tvec!(input.clone().into()),
            |ctx, op_state, node, inputs| {
                let t0 = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                let dt = t0.elapsed();
                let entry = by_op.entry(node.op().name().to_string()).or_default();
                entry.0 += dt;
                entry.1 += 1;
                *by_node
                    .entry(format!("{} ({})", node.name, node.op().name()))
                    .or_default() += dt;
                out
            },
        )?;
    }
    let total = started.elapsed() / runs as u32;
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    println!(
        "{path} at {size}x{size}, {threads} threads: {:.1} ms per frame",
        total.as_secs_f64() * 1e3
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    println!(
        "{:<28} {:>10} {:>7} {:>6}",
        "op", "ms/frame", "share", "nodes"
    );
    for (op, (d, n)) in &ops {
        let ms = per_run(*d);
        let share = 100.0 * ms / (total.as_secs_f64() * 1e3);
        println!("{op:<28} {ms:>10.2} {share:>6.1}% {:>6}", n / runs);
    }
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    println!("slowest nodes:");
    let shown = if std::env::var_os("ALL_NODES").is_some() {
        nodes.len()
    } else {
        8
    };
    for (node, d) in nodes.iter().take(shown) {
        println!("  {:>8.2} ms  {node}", per_run(*d));
    }
    Ok(())
}

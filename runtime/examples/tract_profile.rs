//! Where tract spends a frame: times every node of the optimised plan, sums
//! by op, and divides each node's f32 FMAs (as its op reports them) by its
//! time: GFLOP/s and the fraction of this machine's measured FMA peak
//! (`unet-kernels`' probe, widest instruction set in use, same thread count).
//!
//! `cargo run --release -p unet-runtime --example tract_profile -- MODEL.onnx [SIZE] [RUNS] [THREADS]`
//! (`TRACT_CPU_ISA=-avx512f` keeps tract's kernels on AVX2; building without
//! the `avx512` feature keeps the runtime's own `gemm` kernels there.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use unet_kernels::{measure, Isa};

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
    // unet-infer's default: freed memory stays in the process, so a node's
    // time is not its output's page faults (which a running session does not pay).
    unet_runtime::set_memory_policy(unet_runtime::MemoryPolicy::Keep);
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
    // f32 FMAs per node, as each op reports them for its input facts.
    let mut fmas: HashMap<usize, f64> = HashMap::new();
    for node in plan.model().nodes() {
        let inputs = plan.model().node_input_facts(node.id)?;
        for (cost, count) in node.op.cost(&inputs).unwrap_or_default() {
            if cost == tract_onnx::tract_core::ops::Cost::FMA(f32::datum_type()) {
                *fmas.entry(node.id).or_default() += count.to_i64().unwrap_or(0) as f64;
            }
        }
    }
    let isa = Isa::widest_in_use();
    let peak = isa.and_then(|isa| measure(isa, threads, Duration::from_secs(1)));
    if let Some(p) = peak {
        println!(
            "FMA peak, {} on {threads} thread(s): {:.1} GFLOP/s",
            p.isa.name(),
            p.gflops
        );
    }
    let mut state = plan.spawn()?;
    let input: Tensor = tract_ndarray::Array4::<f32>::from_elem(shape, 0.5).into();
    state.run(tvec!(input.clone().into()))?;

    let mut by_op: HashMap<String, (Duration, usize, f64)> = HashMap::new();
    let mut by_node: HashMap<String, (Duration, f64)> = HashMap::new();
    let started = Instant::now();
    for _ in 0..runs {
        state.run_plan_with_eval(
            tvec!(input.clone().into()),
            |ctx, op_state, node, inputs| {
                let t0 = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                let dt = t0.elapsed();
                let flops = 2.0 * fmas.get(&node.id).copied().unwrap_or(0.0);
                let entry = by_op.entry(node.op().name().to_string()).or_default();
                entry.0 += dt;
                entry.1 += 1;
                entry.2 += flops;
                let entry = by_node
                    .entry(format!("{} ({})", node.name, node.op().name()))
                    .or_default();
                entry.0 += dt;
                entry.1 += flops;
                out
            },
        )?;
    }
    let total = started.elapsed() / runs as u32;
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    let frame_flops = 2.0 * fmas.values().sum::<f64>();
    let rate = |flops: f64, d: Duration| {
        let gflops = flops * runs as f64 / d.as_secs_f64() / 1e9;
        match (flops > 0.0, peak) {
            (false, _) => String::new(),
            (true, Some(p)) => format!("{gflops:>8.1} {:>5.1}%", 100.0 * gflops / p.gflops),
            (true, None) => format!("{gflops:>8.1}"),
        }
    };
    println!(
        "{path} at {size}x{size}, {threads} threads: {:.1} ms per frame, {:.2} GFLOP, {}",
        total.as_secs_f64() * 1e3,
        frame_flops / 1e9,
        rate(frame_flops, total * runs as u32).trim()
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by_key(|(_, (d, _, _))| std::cmp::Reverse(*d));
    println!(
        "{:<28} {:>10} {:>7} {:>6} {:>8} {:>6}",
        "op", "ms/frame", "share", "nodes", "GFLOP/s", "peak"
    );
    for (op, (d, n, flops)) in &ops {
        let ms = per_run(*d);
        let share = 100.0 * ms / (total.as_secs_f64() * 1e3);
        println!(
            "{op:<28} {ms:>10.2} {share:>6.1}% {:>6} {}",
            n / runs,
            rate(*flops / runs as f64, *d)
        );
    }
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    println!("slowest nodes:");
    let shown = if std::env::var_os("ALL_NODES").is_some() {
        nodes.len()
    } else {
        8
    };
    for (node, (d, flops)) in nodes.iter().take(shown) {
        println!(
            "  {:>8.2} ms {:>15}  {node}",
            per_run(*d),
            rate(*flops / runs as f64, *d)
        );
    }
    Ok(())
}

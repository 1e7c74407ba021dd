//! Times each 3x3 convolution of a U-Net level by level: forward, input gradient
//! (candle backward uses conv_transpose2d), the same gradient as conv2d with the
//! flipped, transposed kernel, and the weight gradient.
//! `RAYON_NUM_THREADS=2 cargo run --release -p unet-trainer --example opprof -- BATCH SIZE BASE`
use std::time::Instant;
use unet_models::candle_core::{Device, Tensor};
fn t<F: FnMut() -> anyhow::Result<Tensor>>(mut f: F) -> anyhow::Result<f64> {
    f()?;
    let n = 3;
    let t0 = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0 / n as f64)
}
fn main() -> anyhow::Result<()> {
    let b: usize = std::env::args().nth(1).unwrap_or("4".into()).parse()?;
    let s0: usize = std::env::args().nth(2).unwrap_or("128".into()).parse()?;
    let base: usize = std::env::args().nth(3).unwrap_or("16".into()).parse()?;
    let dev = Device::Cpu;
    let (mut tf, mut tdx, mut tdw, mut tdx2) = (0.0, 0.0, 0.0, 0.0);
    println!(
        "{:>5} {:>5} {:>5} | {:>9} {:>9} {:>9}",
        "cin", "cout", "hw", "fwd ms", "dX ms", "dW ms"
    );
    let mut shapes = vec![];
    for l in 0..=4 {
        let s = s0 >> l;
        let c = base << l;
        let cin = if l == 0 { 3 } else { c / 2 };
        shapes.push((cin, c, s));
        shapes.push((c, c, s));
        if l < 4 {
            shapes.push((2 * c, c, s));
            shapes.push((c, c, s));
        }
    }
    for (cin, cout, s) in shapes {
        let x = Tensor::randn(0f32, 1.0, (b, cin, s, s), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &dev)?;
        let g = Tensor::randn(0f32, 1.0, (b, cout, s, s), &dev)?;
        let f = t(|| Ok(x.conv2d(&w, 1, 1, 1, 1)?))?;
        let dx = t(|| Ok(g.conv_transpose2d(&w, 1, 0, 1, 1)?))?;
        let wf = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
        let dx2 = t(|| Ok(g.conv2d(&wf, 1, 1, 1, 1)?))?;
        let a = g.conv_transpose2d(&w, 1, 0, 1, 1)?;
        let b = g.conv2d(&wf, 1, 1, 1, 1)?;
        let err = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        tdx2 += dx2;
        let dw = t(|| {
            Ok(x.transpose(0, 1)?
                .conv2d(&g.transpose(0, 1)?, 1, 1, 1, 1)?
                .transpose(0, 1)?)
        })?;
        println!("{cin:>5} {cout:>5} {s:>5} | {f:>9.1} {dx:>9.1} {dw:>9.1} | dX via conv2d(flipped W^T) {dx2:>7.1} (max diff {err:.1e})");
        tf += f;
        tdx += dx;
        tdw += dw;
    }
    println!("total conv3x3: fwd {tf:.0} ms, dX (conv_transpose2d) {tdx:.0} ms, dW (conv2d of transposed) {tdw:.0} ms, dX via conv2d {tdx2:.0} ms");
    Ok(())
}

use std::time::Instant;
use unet_models::candle_core::{Device, Tensor, Var};
fn main() -> anyhow::Result<()> {
    for &(cin, cout, hw) in &[(64usize, 64usize, 256usize), (64usize, 64usize, 256usize), (128, 64, 256), (128, 128, 128), (512, 512, 32), (1024, 512, 32), (3,64,256)] {
        let x = Var::from_tensor(&Tensor::rand(0f32, 1., (1, cin, hw, hw), &Device::Cpu)?)?;
        let w = Var::from_tensor(&Tensor::rand(0f32, 1., (cout, cin, 3, 3), &Device::Cpu)?)?;
        let mut f = vec![]; let mut b = vec![];
        for _ in 0..9 {
            let t = Instant::now();
            let y = unet_models::layers::conv2d(x.as_tensor(), w.as_tensor(), None, 1)?;
            f.push(t.elapsed().as_secs_f64()*1e3);
            let t = Instant::now();
            let g = y.sum_all()?.backward()?;
            let _ = g.get(w.as_tensor());
            b.push(t.elapsed().as_secs_f64()*1e3);
        }
        f.sort_by(f64::total_cmp); b.sort_by(f64::total_cmp);
        println!("{cin}->{cout} {hw}: fwd {:.1} ms bwd {:.1} ms", f[4], b[4]);
    }
    Ok(())
}

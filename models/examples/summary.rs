//! Prints the layer graph and parameter count of a preset:
//! `cargo run -p unet-models --example summary -- unet`
use unet_models::{Graph, UNetConfig, PRESET_NAMES};

fn main() -> anyhow::Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names: Vec<&str> = if names.is_empty() {
        PRESET_NAMES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    println!("{:<20} {:>14} {:>9}", "preset", "parameters", "tensors");
    for name in names {
        let graph = Graph::build(&UNetConfig::preset(name)?)?;
        println!(
            "{:<20} {:>14} {:>9}",
            name,
            graph.num_parameters(),
            graph.params().len()
        );
    }
    Ok(())
}

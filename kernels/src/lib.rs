//! What the CPU kernels of training (`unet-models`) and inference
//! (`unet-runtime`) share, depending on neither: for now the FMA-peak probe
//! ([`peak`]) that their benchmarks divide their GFLOP/s by, so a kernel's
//! efficiency can be judged on any CPU, one of another vendor included.

pub mod peak;

pub use peak::{measure, Isa, Peak};

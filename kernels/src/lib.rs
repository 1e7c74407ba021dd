//! What the CPU kernels of training (`unet-models`) and inference
//! (`unet-runtime`) share, depending on neither: the FMA-peak probe
//! ([`peak`]) that their benchmarks divide their GFLOP/s by, so a kernel's
//! efficiency can be judged on any CPU, one of another vendor included, and
//! the transforms of Winograd's 3×3 convolution ([`winograd`]).

pub mod peak;
pub mod winograd;

pub use peak::{measure, Isa, Peak};

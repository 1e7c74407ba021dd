//! U-Net (Ronneberger et al. 2015) and Attention U-Net (Oktay et al. 2018) in candle.
//!
//! - [`UNetConfig`] and its presets describe a network; [`Graph::build`] turns
//!   one into the single architecture description every consumer derives from.
//! - [`UNet`] runs that description with candle (train and eval modes).
//! - [`io`] reads and writes self-describing safetensors files.
//!
//! Tensors are NCHW, f32.

pub use unet_spec::arch;
pub mod config;
mod cpu_kernels;
pub mod error;
pub mod io;
pub mod layers;
pub mod milesial;
pub mod model;

pub use arch::{Graph, Node, NodeId, Op, ParamKind, ParamSpec};
pub use config::{Padding, Preprocessing, UNetConfig, Upsampling, PRESET_NAMES};
pub use error::{ModelError, Result};
pub use model::UNet;

pub use candle_core;
pub use candle_nn;
pub use unet_spec;

//! The contract every stage of the toolchain agrees on, with no candle: what
//! the trainer writes into a model file, the exporter copies into ONNX
//! `metadata_props`, and the runtime reproduces on a device.
//!
//! - [`UNetConfig`], its presets and the one architecture description ([`Graph`]);
//! - [`keys`]: the metadata keys;
//! - [`Preprocessing`] (normalisation, channel order, threshold, class names) and [`Head`];
//! - [`InputGeometry`]: the size and resize a model was trained at, and
//!   [`SizeRule`]: the sizes a graph accepts;
//! - [`resample`]: the one resampler training and inference share;
//! - [`Provenance`]; [`ModelInfo`]: all of it read back from a file's metadata;
//! - [`size::parse_wxh`]: the one `WxH` parser of every command line.

pub mod arch;
pub mod config;
mod contract;
mod error;
pub mod geometry;
mod head;
pub mod keys;
pub mod preprocessing;
pub mod provenance;
pub mod resample;
pub mod size;

pub use arch::{Graph, Node, NodeId, Op, ParamKind, ParamSpec};
pub use config::{Padding, UNetConfig, Upsampling, PRESET_NAMES};
pub use contract::ModelInfo;
pub use error::{Result, SpecError};
pub use geometry::{InputGeometry, Placement, ResizeMode, SizeRule};
pub use head::Head;
pub use preprocessing::{ChannelOrder, Preprocessing};
pub use provenance::Provenance;
pub use resample::{resample, Filter, Planar};

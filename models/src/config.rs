//! The model's configuration and preprocessing live in the candle-free
//! `unet-spec` crate; re-exported here under their old paths.

pub use unet_spec::config::*;
pub use unet_spec::keys::{CONFIG as CONFIG_KEY, PREPROCESSING as PREPROCESSING_KEY};
pub use unet_spec::preprocessing::{ChannelOrder, Preprocessing};

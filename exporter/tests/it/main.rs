//! Integration tests of unet-export, one binary (see STYLE.md, ripgrep).

mod cli;
mod common;
mod export;
mod interop;
mod milesial;
mod misuse;
mod nnef;

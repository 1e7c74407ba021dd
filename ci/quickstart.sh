#!/usr/bin/env bash
# README's first command. Until the trainer, exporter and runtime land, it prints
# the model presets with their parameter counts (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "(pipeline not wired yet: printing the model presets)"
cargo run --release -q -p unet-models --example summary

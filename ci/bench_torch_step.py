"""PyTorch CPU time of one training step of the reference U-Net: the baseline that
`unet-train bench-step` (candle, CPU) is compared with.

The step is the one `unet-train bench-step` times: forward in train mode, BCE-with-logits
against a random binary target, backward, AdamW (lr 1e-3, weight decay 1e-2). Two warm-up
steps, then the median of the timed steps. The network is `UNet(preset(name))` from
`fixtures/generate.py`, the independent PyTorch reference of the golden fixtures.

    python ci/bench_torch_step.py                          # unet (base 64), 256x256, batch 1, 2 threads
    RAYON_NUM_THREADS=2 target/release/unet-train bench-step --model unet --size 256 --batch-size 1

`--conv-layers` times single 3x3 convolutions of the preset's shapes instead, as
`cargo run --release -p unet-models --example conv_layers` does for candle.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def load_reference():
    """Imports fixtures/generate.py; `safetensors` is only needed there to write fixtures."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        shim = types.ModuleType("safetensors.torch")
        shim.save = lambda *_a, **_k: None
        sys.modules.setdefault("safetensors", types.ModuleType("safetensors"))
        sys.modules["safetensors.torch"] = shim
    spec = importlib.util.spec_from_file_location("unet_reference", ROOT / "fixtures" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (input channels, output channels, side): as models/examples/conv_layers.rs.
CONV_LAYERS = [
    (3, 64, 256), (64, 64, 256), (128, 64, 256), (128, 128, 128), (256, 256, 64), (512, 512, 32), (1024, 512, 32),
]


def conv_layers(runs: int = 9) -> None:
    print("conv 3x3            forward ms  backward ms")
    for cin, cout, side in CONV_LAYERS:
        x = torch.rand(1, cin, side, side, requires_grad=True)
        w = torch.rand(cout, cin, 3, 3, requires_grad=True)
        forward, backward = [], []
        for run in range(runs + 1):
            t0 = time.perf_counter()
            y = F.conv2d(x, w, padding=1)
            t1 = time.perf_counter()
            y.sum().backward()
            t2 = time.perf_counter()
            x.grad = w.grad = None
            if run > 0:
                forward.append((t1 - t0) * 1e3)
                backward.append((t2 - t1) * 1e3)
        label = f"{cin}->{cout} {side}x{side}"
        print(f"{label:<20} {statistics.median(forward):>10.1f} {statistics.median(backward):>12.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    p.add_argument("--conv-layers", action="store_true", help="time single convolutions instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.conv_layers:
        conv_layers()
        return
    torch.manual_seed(0)
    ref = load_reference()
    cfg = ref.preset(args.model)
    model = ref.UNet(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    x = torch.randn(args.batch, cfg["in_channels"], args.size, args.size)
    t = (torch.rand(args.batch, cfg["out_channels"], args.size, args.size) >= 0.5).float()
    times = []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        y = model(x)
        t1 = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(y, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        dt = t3 - t0
        print(
            f"  step {i}: {dt * 1e3:.1f} ms (forward {(t1 - t0) * 1e3:.1f}, "
            f"loss+backward {(t2 - t1) * 1e3:.1f}, adamw {(t3 - t2) * 1e3:.1f})"
            f"{' warm-up' if i < 2 else ''}",
            flush=True,
        )
        if i >= 2:
            times.append(dt)
    print(
        f"pytorch {torch.__version__} {args.model} {args.size}x{args.size} batch {args.batch}, "
        f"{args.threads} thread(s): median step {statistics.median(times) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()

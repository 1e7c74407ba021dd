"""PyTorch training-step time of the fixtures' reference U-Net on a GPU: the baseline that
`unet-train bench-step --device cuda` is compared with (docs/cuda.md).

The step is the one `unet-train bench-step` times: forward in train mode, BCE-with-logits
against a random binary target, backward, AdamW (lr 1e-3, weight decay 1e-2), then a device
synchronize. Two warm-up steps, then the median of the timed steps; images/s = batch / median.
The network is `UNet(preset(name))` from `fixtures/generate.py` (the independent PyTorch
reference the golden fixtures come from), imported, not re-written.

    python ci/cuda/bench_torch_gpu.py                       # unet, 256x256, batch 8 and 16, f32 and bf16
    python ci/cuda/bench_torch_gpu.py --batch 8 --precision bf16 --steps 50 --json out.jsonl

f32 runs with TF32 off (candle's f32 GEMMs are full f32) unless --tf32; bf16 is
`torch.autocast(dtype=torch.bfloat16)` with f32 master weights (no loss scaling needed
for bf16). cudnn.benchmark is on (what a PyTorch user would do), --no-cudnn-benchmark turns it off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent


def load_reference():
    """Imports fixtures/generate.py (in a checkout) or reference_generate.py (in the carry folder).

    generate.py imports `safetensors.torch` at module level only to write fixtures; a GPU
    machine may lack that package, so a placeholder stands in when it is missing.
    """
    candidates = [HERE / "reference_generate.py", HERE.parent.parent / "fixtures" / "generate.py"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        sys.exit(f"bench_torch_gpu: reference model not found; looked for {', '.join(map(str, candidates))}")
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        shim = types.ModuleType("safetensors.torch")

        def _unavailable(*_a, **_k):
            raise RuntimeError("safetensors is not installed (only fixture writing needs it)")

        shim.save = _unavailable
        sys.modules.setdefault("safetensors", types.ModuleType("safetensors"))
        sys.modules["safetensors.torch"] = shim
    spec = importlib.util.spec_from_file_location("unet_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(ref, args, batch: int, precision: str) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ref.preset(args.model)
    model = ref.UNet(cfg).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    x = torch.randn(batch, cfg["in_channels"], args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = (torch.rand(batch, cfg["out_channels"], args.size, args.size, device=device) >= 0.5).float()
    autocast = precision == "bf16"
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    times = []
    for i in range(args.steps + 2):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            y = model(x)
            loss = F.binary_cross_entropy_with_logits(y.float(), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device) if cuda else "cpu",
        "model": args.model,
        "size": args.size,
        "batch": batch,
        "precision": precision,
        "tf32": bool(args.tf32 and precision == "f32"),
        "cudnn_benchmark": not args.no_cudnn_benchmark,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "median_step_ms": round(median * 1e3, 3),
        "min_step_ms": round(min(times) * 1e3, 3),
        "images_per_s": round(batch / median, 2),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
        "final_loss": float(loss.detach()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet", help="preset name of fixtures/generate.py (unet = base 64)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    p.add_argument("--precision", nargs="+", choices=["f32", "bf16"], default=["f32", "bf16"])
    p.add_argument("--steps", type=int, default=20, help="timed steps after 2 warm-up steps")
    p.add_argument("--device", default="cuda:0", help="cuda[:N]; cpu only to smoke-test this script")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in f32 convs/matmuls")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", type=Path, help="append one JSON line per run to this file")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench_torch_gpu: torch.cuda.is_available() is False (no GPU or a CPU-only torch)")
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    ref = load_reference()
    for precision in args.precision:
        for batch in args.batch:
            r = bench(ref, args, batch, precision)
            print(
                f"pytorch {r['model']} {r['size']}x{r['size']} batch {batch} {precision}: "
                f"median {r['median_step_ms']:.1f} ms/step, {r['images_per_s']:.1f} images/s "
                f"({r['gpu']}, torch {r['torch']}, peak {r['max_memory_gib']} GiB)",
                flush=True,
            )
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()

"""Validates ONNX files written by `unet-export` with tools this project did not write.

For every exported file:
  1. `onnx.checker.check_model(model, full_check=True)` (the full check includes
     strict shape inference);
  2. `onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)`,
     and the inferred output shape must agree with the declared one;
  3. the `unet.*` metadata the runtime needs is present;
  4. the `onnxruntime` Python package runs the file on the fixture's `input` and
     the output is compared with the PyTorch reference's `eval_output` (after the
     file's head, with de-normalised input when the graph normalises itself),
     and once more at batch 1 to prove the batch axis is dynamic.

Needs `numpy`, `onnx` and `onnxruntime` only. Two ways to run it from the
repository root:

    # export every fixture case in several variants into a temp dir, then validate
    .venv/bin/python ci/validate_onnx.py --export [--unet-export target/release/unet-export]

    # validate files exported already; each named <case>[.<variant>].onnx
    .venv/bin/python ci/validate_onnx.py DIR_OR_FILES...

Exits non-zero when any file fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
CASES = ["unet", "unet-bilinear", "unet-paper", "attention-unet"]
# Tolerances of the exporter's check (unet_exporter::check::Tolerance).
F32_TOL = (1e-4, 1e-3)
F16_TOL = (5e-2, 5e-2)
REQUIRED_METADATA = ["unet.config", "unet.preprocessing", "unet.head", "unet.normalize_in_graph"]
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}

# Export variants: name -> extra unet-export flags. Together they cover every
# opset edge, BN folding, fp16, each head and in-graph normalisation.
VARIANTS = {
    "default": [],
    "opset13": ["--opset", "13"],
    "opset21-foldbn": ["--opset", "21", "--fold-bn"],
    "head-normalize": ["--normalize-in-graph"],  # head added per case below
    "fp16": ["--fp16"],
    "static": [],  # --shape added per case below
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (8-byte header length, JSON header, data)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def apply_head(head: str, logits: np.ndarray) -> np.ndarray:
    if head == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if head == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if head == "argmax":
        return logits.argmax(axis=1, keepdims=True).astype(np.float32)
    return logits


def case_of(path: Path) -> str:
    return path.name.split(".")[0]


def validate(path: Path) -> tuple[bool, str]:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        return False, f"metadata lacks {missing}"
    declared = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value or d.dim_param for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 4 or any(isinstance(a, int) and isinstance(b, int) and a and b and a != b for a, b in zip(declared, out_dims)):
        return False, f"inferred output shape {out_dims} disagrees with declared {declared}"

    case = case_of(path)
    io_path = FIXTURES / case / "io.safetensors"
    if not io_path.exists():
        return True, f"checker + shape inference ok (no fixture `{case}` to compare with)"
    io = read_safetensors(io_path)
    x, expected_logits = io["input"], io["eval_output"]
    head = meta["unet.head"]
    fp16 = meta.get("unet.fp16") == "true"
    if meta["unet.normalize_in_graph"] == "true":
        pre = json.loads(meta["unet.preprocessing"])
        mean = np.array(pre["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.array(pre["std"], np.float32).reshape(1, -1, 1, 1)
        x = x * std + mean
    expected = apply_head(head, expected_logits)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    (got,) = session.run(None, {input_name: x.astype(np.float32)})
    if got.shape != expected.shape:
        return False, f"onnxruntime output shape {got.shape} != expected {expected.shape}"
    atol, rtol = F16_TOL if fp16 else F32_TOL
    err = np.abs(got.astype(np.float64) - expected)
    bad = int((err > atol + rtol * np.abs(expected)).sum())
    if head == "argmax":
        # A near tie between two class logits may flip under f16; allow a few pixels.
        bad = bad if not fp16 else max(0, bad - expected.size // 100)
    dynamic = ""
    if session.get_inputs()[0].shape[0] != x.shape[0]:
        (one,) = session.run(None, {input_name: x[:1].astype(np.float32)})
        if one.shape != expected[:1].shape or not np.allclose(one, got[:1], atol=atol, rtol=rtol):
            return False, "batch 1 differs from the first item of batch 2"
        dynamic = ", batch 1 ok"
    ok = bad == 0
    return ok, f"max abs err {err.max():.2e} vs eval_output, {bad} of {err.size} outside tolerance{dynamic}"


def export_all(exporter: list[str], out: Path) -> list[Path]:
    """Exports every fixture case in every variant with `unet-export --no-check`."""
    files = []
    for case in CASES:
        weights = FIXTURES / case / "weights.safetensors"
        config = json.loads(
            (FIXTURES / "cases.json").read_text()
        )[case]
        shape = "x".join(str(d) for d in config["input_shape"])
        multi = config["config"]["out_channels"] > 1
        for name, flags in VARIANTS.items():
            flags = list(flags)
            if name == "head-normalize":
                flags += ["--head", "argmax" if multi else "sigmoid"]
            if name == "static":
                flags += ["--shape", shape]
            target = out / f"{case}.{name}.onnx"
            cmd = exporter + [str(weights), "-o", str(target), "--no-check", *flags]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            files.append(target)
        if multi:
            target = out / f"{case}.softmax.onnx"
            subprocess.run(exporter + [str(weights), "-o", str(target), "--no-check", "--head", "softmax"], check=True, stdout=subprocess.DEVNULL)
            files.append(target)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="ONNX files or directories of them")
    parser.add_argument("--export", action="store_true", help="export every fixture case first (into a temp dir)")
    parser.add_argument("--unet-export", default=None, help="unet-export binary [default: cargo run --release]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unet-validate-") as tmp:
        files: list[Path] = []
        if args.export:
            exporter = [args.unet_export] if args.unet_export else [
                "cargo", "run", "--quiet", "--release", "-p", "unet-exporter", "--bin", "unet-export", "--"]
            files += export_all(exporter, Path(tmp))
        for p in args.paths:
            files += sorted(p.glob("*.onnx")) if p.is_dir() else [p]
        if not files:
            parser.error("nothing to validate: give ONNX files or --export")
        failed = 0
        for f in files:
            try:
                ok, msg = validate(f)
            except Exception as e:  # the checker and onnxruntime raise many types
                ok, msg = False, f"{type(e).__name__}: {e}"
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {f.name:36s} {msg}")
        print(f"{len(files) - failed} of {len(files)} files valid")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

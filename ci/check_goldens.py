"""Reads the goldens `unet-export golden --format onnx-test|npz|polygraphy`
wrote with each format's own reader, and checks the saved outputs against
ONNX Runtime running the torch-exported model of the same weights.

    python ci/check_goldens.py GOLDENS_DIR fixtures/unet/model.onnx

GOLDENS_DIR holds `onnx-test/`, `npz/` and `polygraphy/`, written with
`--head sigmoid` from fixtures/unet/weights.safetensors. Readers:
`onnx.numpy_helper.to_array` (what ONNX's backend tests and
`onnx_test_runner` use), `numpy.load`, and Polygraphy's `load_json` /
`RunResults.load` (what `polygraphy run --load-inputs/--load-outputs` use).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

# Candle vs ONNX Runtime on the same weights (GOLDEN_ATOL of fixtures/README.md).
ATOL = 1e-4


def main() -> None:
    root, model = Path(sys.argv[1]), sys.argv[2]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def expected(x: np.ndarray) -> np.ndarray:
        (logits,) = session.run(None, {input_name: x})
        return 1.0 / (1.0 + np.exp(-logits))

    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    sets = sorted((root / "onnx-test").glob("test_data_set_*"))
    assert sets, "no test_data_set_* folders"
    pairs["onnx-test"] = []
    for s in sets:
        tensors = []
        for f in ("input_0.pb", "output_0.pb"):
            t = onnx.TensorProto()
            t.ParseFromString((s / f).read_bytes())
            tensors.append(numpy_helper.to_array(t))
        pairs["onnx-test"].append((tensors[0], tensors[1]))

    files = sorted((root / "npz").glob("case*.npz"))
    assert files, "no case*.npz"
    pairs["npz"] = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            assert sorted(z.files) == ["input", "probabilities"], z.files
            pairs["npz"].append((z["input"], z["probabilities"]))

    try:
        from polygraphy.comparator import RunResults
        from polygraphy.json import load_json
    except ImportError:
        print("polygraphy: not installed, its JSON not checked")
    else:
        feeds = load_json(str(root / "polygraphy" / "inputs.json"))
        results = RunResults.load(str(root / "polygraphy" / "outputs.json"))
        ((runner, iterations),) = list(results.items())
        outs = [it["probabilities"] for it in iterations]
        pairs["polygraphy"] = [(feed["input"], out) for feed, out in zip(feeds, outs)]
        assert len(feeds) == len(outs), (len(feeds), len(outs))

    counts = {len(v) for v in pairs.values()}
    assert len(counts) == 1, {k: len(v) for k, v in pairs.items()}
    for fmt, cases in pairs.items():
        worst = 0.0
        for i, (x, y) in enumerate(cases):
            assert x.dtype == np.float32 and y.dtype == np.float32, (fmt, x.dtype, y.dtype)
            assert x.ndim == 4 and y.shape == (x.shape[0], 1, x.shape[2], x.shape[3]), (fmt, x.shape, y.shape)
            # Every format holds the same case i.
            np.testing.assert_array_equal(x, pairs["onnx-test"][i][0])
            err = float(np.abs(expected(x) - y).max())
            assert err <= ATOL, f"{fmt} case {i}: max abs {err} vs ONNX Runtime"
            worst = max(worst, err)
        print(f"{fmt}: {len(cases)} cases read back, max abs vs ONNX Runtime {worst:.2e}")


if __name__ == "__main__":
    main()

"""Where ONNX Runtime spends a frame: its own profiler's kernel times, summed by op type
and listed for the slowest nodes; the counterpart of `runtime/examples/tract_profile.rs`.

    .venv/bin/python ci/ort_profile.py model.onnx [SIZE] [RUNS] [THREADS]

The profiler's JSON goes to a temporary directory and is deleted afterwards.
"""
import collections
import json
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort


def main() -> None:
    path = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        graph_input = session.get_inputs()[0]
        channels = graph_input.shape[1] if isinstance(graph_input.shape[1], int) else 3
        name = graph_input.name
        x = np.full((1, channels, size, size), 0.5, np.float32)
        for _ in range(warmup + runs):
            session.run(None, {name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    by_op = collections.defaultdict(float)
    by_node = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] += e["dur"]
            by_node[f"{e['name'][:-len('_kernel_time')]} ({op})"] += e["dur"]
    per_frame = lambda us: us / (warmup + runs) / 1e3
    print(f"{path} at {size}x{size}, {threads} threads: {per_frame(sum(by_op.values())):.1f} ms of kernels per frame")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"{op:<28} {per_frame(us):10.2f}")
    print("slowest nodes:")
    for node, us in sorted(by_node.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {per_frame(us):8.2f} ms  {node}")


if __name__ == "__main__":
    main()

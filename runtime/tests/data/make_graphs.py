"""Hand-built ONNX graphs whose outputs can be computed by hand, for the
runtime's pre/post-processing, error and C ABI tests.

Regenerate (explicit, never part of a test run; needs only `onnx`):
    python runtime/tests/data/make_graphs.py

Pinned: onnx==1.23.2. Deterministic: no random weights.

- color.onnx         logit = (R - G) of the normalised input (1x1 conv [1,-1,0]);
                     metadata: same padding, depth 1, mean 0, std 1 (pixels / 255),
                     so a pure red pixel gives sigmoid(1), a green one sigmoid(-1).
- color_bgr.onnx     the same graph, channel_order "bgr": channel 0 is blue.
- head_sigmoid.onnx  sigmoid((x - 0.5) / 0.25 -> 1x1 conv [1,-1,0]) inside the graph,
                     `unet.head` = sigmoid, `unet.normalize_in_graph` = true:
                     red gives sigmoid(4); the runtime must neither normalise
                     nor apply sigmoid again.
- rank3.onnx         input of rank 3 (not an image model).
- int64_input.onnx   the color graph behind a Cast from an int64 input: the runtime
                     feeds f32 only and must refuse it at load, on every back end.
- opset99.onnx       the color graph stamped with operator set 99 (unreleased):
                     ONNX Runtime refuses it, tract must too.
- fixed_64x48.onnx   the color graph with a fixed 1x3x48x64 input (H 48, W 64):
                     a tensor of another size is refused on every back end.
- dangling_output.onnx  the color graph declaring a graph output no node produces
                     (the onnx fuzz target's find: tract-onnx panicked on it); every
                     back end must refuse it at load with a message.
- external/model.onnx + external/weights.bin
                     the color graph with its weights [1, -1, 0] in an external
                     data file next to it, which must be read from the model's
                     folder whatever the working directory.
"""
import json
import os

import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def config(in_channels=3, out_channels=1):
    return json.dumps({
        "in_channels": in_channels, "out_channels": out_channels, "base_width": 4,
        "depth": 1, "padding": "same", "batch_norm": False,
        "upsampling": "transposed", "dropout": 0.0, "attention": False,
    })


def pre(mean, std, order="rgb"):
    return json.dumps({"mean": mean, "std": std, "threshold": 0.5,
                       "class_names": ["foreground"], "channel_order": order})


def image_io():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, "H", "W"])
    return x, y


def conv_r_minus_g(src, dst):
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0, -1.0, 0.0])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.0])
    return helper.make_node("Conv", [src, "w", "b"], [dst]), [w, b]


def save(name, nodes, inits, inputs, outputs, meta, opset=17, external=None, check=True):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="make_graphs.py")
    model.ir_version = 8
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    path = os.path.join(HERE, name + ".onnx")
    if external:
        # Every initializer into one file beside the model (only raw_data
        # tensors move out).
        for t in model.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external, size_threshold=0)
        onnx.checker.check_model(path)
        return
    if check and opset <= onnx.defs.onnx_opset_version():
        onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    x, y = image_io()
    conv, inits = conv_r_minus_g("input", "output")
    save("color", [conv], inits, [x], [y],
         {"unet.config": config(), "unet.preprocessing": pre([0.0] * 3, [1.0] * 3)})
    save("color_bgr", [conv], inits, [x], [y],
         {"unet.config": config(), "unet.preprocessing": pre([0.0] * 3, [1.0] * 3, "bgr")})

    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    quarter = helper.make_tensor("quarter", TensorProto.FLOAT, [], [0.25])
    conv, inits = conv_r_minus_g("normalised", "logits")
    nodes = [
        helper.make_node("Sub", ["input", "half"], ["centred"]),
        helper.make_node("Div", ["centred", "quarter"], ["normalised"]),
        conv,
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    save("head_sigmoid", nodes, inits + [half, quarter], [x], [y],
         {"unet.config": config(), "unet.preprocessing": pre([0.5] * 3, [0.25] * 3),
          "unet.head": "sigmoid", "unet.normalize_in_graph": "true"})

    x3 = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8])
    y3 = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 8])
    save("rank3", [helper.make_node("Relu", ["input"], ["output"])], [], [x3], [y3], {})

    meta = {"unet.config": config(), "unet.preprocessing": pre([0.0] * 3, [1.0] * 3)}
    x64 = helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 3, "H", "W"])
    cast = helper.make_node("Cast", ["input"], ["as_f32"], to=TensorProto.FLOAT)
    conv, inits = conv_r_minus_g("as_f32", "output")
    save("int64_input", [cast, conv], inits, [x64], [y], meta)

    conv, inits = conv_r_minus_g("input", "output")
    save("opset99", [conv], inits, [x], [y], meta, opset=99)

    xf = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 48, 64])
    yf = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 48, 64])
    save("fixed_64x48", [conv], inits, [xf], [yf], meta)

    dangling = helper.make_tensor_value_info("missing", TensorProto.FLOAT, ["N", 1, "H", "W"])
    save("dangling_output", [conv], inits, [x], [dangling], meta, check=False)

    save("external/model", [conv], inits, [x], [y], meta, external="weights.bin")


if __name__ == "__main__":
    main()

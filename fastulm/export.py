"""``python -m fastulm.export RUN_DIR OUT_DIR``: a self-contained model for serving.

    python -m fastulm.export runs/clas export/clas
    python -m fastulm.predict export/clas --onnx --file reviews.csv   # no torch needed

OUT_DIR gets ``model.onnx`` (dynamic batch and length), ``vocab.json``, ``labels.json``
(class names, task, label_delim, threshold; classifiers only) and ``tokenizer.json`` (how
texts become ids, the model's bptt / max_len / padding, and under ``sha256`` the checksums
of the other files, which ``fastulm.inference`` verifies); nothing pickled. The folder is
written under a temporary name beside OUT_DIR and renamed into place when complete, so a
failed or killed export leaves no OUT_DIR, or the earlier one whole; ``--force`` replaces
an earlier export, never other files.

The graph is written with ``onnx.helper`` from the run's weights, not traced by
``torch.onnx.export``: the classifier's chunk loop has data-dependent control flow, its
pooling is a custom op the exporter cannot see into, and torch 2.13's default (dynamo)
exporter needs ``onnxscript``, which this project does not depend on. Written by hand, the
model is the classifier in eval form, in plain ONNX ops (opset 17):

- classifier: inputs ``ids`` int64 [batch, seq] (each row's tokens first, then padding),
  ``lengths`` int64 [batch], ``pooled_from`` int64 [batch] (each row's first pooled token:
  ``fastulm.inference.pooled_from``); embedding, the LSTM layers (ONNX ``LSTM`` with
  per-row ``sequence_lens``; QRNN layers: one MatMul for the gates and a ``Scan`` for the
  recurrence), masked concat pooling [last, max, mean] in Where/Reduce ops,
  the head with its batchnorms folded; output ``logits`` [batch, n_classes];
- language model: inputs ``ids`` and the state (``state_in_0``..: h, c per LSTM layer; c,
  and the last input for the first, window-2 layer, per QRNN layer; each [1, batch, width],
  the widths in ``tokenizer.json``'s ``state_widths``); outputs ``logits`` [batch, seq, vocab] and ``state_out_*``, for
  next-token scoring (generation stays in torch: ``python -m fastulm.generate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fastulm.checksums import file_sha256
from fastulm.cli import parser
from fastulm.inference import FILES, FORMAT

OPSET = 17
RULES = (
    "fix_html replace_rep replace_wrep spec_add_spaces rm_useless_spaces replace_all_caps "
    "replace_maj lowercase | replace_space"
)


def _parser() -> argparse.ArgumentParser:
    p = parser(
        "python -m fastulm.export",
        "Write a run's model as ONNX + vocab + labels, for onnxruntime without torch.",
    )
    p.add_argument("run_dir", help="a classifier or language-model run directory")
    p.add_argument("out_dir", help="the folder to write (model.onnx, vocab.json, ...)")
    p.add_argument("--force", action="store_true", help="replace an earlier export there")
    return p


# ------------------------------------------------------------------ graph building


class _Graph:
    """Nodes and initializers, named as they are added."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any):
        from onnx import helper

        self.n += 1
        outs = [f"{op_type.lower()}_{self.n}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _lstm_weights(rnn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's gate order (i, f, g, o) to ONNX's (i, o, f, c), with its [1, ...] shapes."""

    def reorder(w: np.ndarray) -> np.ndarray:
        i, f, g, o = np.split(w, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    m = rnn.module
    w = reorder(_np(m.weight_ih_l0))[None]
    r = reorder(_np(rnn.weight_hh_l0_raw))[None]
    b = np.concatenate([reorder(_np(m.bias_ih_l0)), reorder(_np(m.bias_hh_l0))])[None]
    return w, r, b


def _lstm_layer(g: _Graph, i: int, rnn, x: str, seq_lens: str | None, state: list[str]):
    w, r, b = _lstm_weights(rnn)
    inputs = [x, g.const(f"lstm{i}_W", w), g.const(f"lstm{i}_R", r), g.const(f"lstm{i}_B", b)]
    inputs += [seq_lens or "", *state]
    y, yh, yc = g.op("LSTM", inputs, n_out=3, hidden_size=rnn.n_out)
    return g.op("Squeeze", [y, g.const(f"axis1_{i}", np.array([1], np.int64))]), [yh, yc]


def _forget_mult_body(i: int) -> Any:
    """Scan's body for one time step of a QRNN: c = c_prev + f * (z - c_prev)."""
    from onnx import TensorProto, helper

    names = [f"q{i}_{n}" for n in ("c_in", "z", "f", "d", "m", "c_out", "c_scan")]
    c_in, z, f, d, m, c_out, c_scan = names
    nodes = [
        helper.make_node("Sub", [z, c_in], [d]),
        helper.make_node("Mul", [f, d], [m]),
        helper.make_node("Add", [c_in, m], [c_out]),
        helper.make_node("Identity", [c_out], [c_scan]),
    ]

    def info(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    return helper.make_graph(
        nodes, f"forget_mult_{i}", [info(c_in), info(z), info(f)], [info(c_out), info(c_scan)]
    )


def _qrnn_layer(g: _Graph, i: int, rnn, x: str, state: list[str]):
    """One QRNN layer (time-major x): the gates in one MatMul, the recurrence in a Scan.

    The recurrence is causal, so the right padding of a classifier batch changes no real
    position's output and needs no sequence lengths.
    """
    H = rnn.n_out
    axis0 = g.const(f"q{i}_axis0", np.array([0], np.int64))
    first = g.op(
        "Slice",
        [
            x,
            g.const(f"q{i}_s0", np.array([0], np.int64)),
            g.const(f"q{i}_e1", np.array([1], np.int64)),
            axis0,
        ],
    )
    zeros_like_first = g.const(f"q{i}_zero", np.array(0.0, np.float32))
    finals = []
    inputs = x
    if rnn.window == 2:
        prev = state[1] if state else g.op("Mul", [first, zeros_like_first])  # [1, batch, n_in]
        but_last = g.op(
            "Slice",
            [
                x,
                g.const(f"q{i}_s0b", np.array([0], np.int64)),
                g.const(f"q{i}_em1", np.array([-1], np.int64)),
                axis0,
            ],
        )
        before = g.op("Concat", [prev, but_last], axis=0)
        inputs = g.op("Concat", [before, x], axis=2)
        last = g.op(
            "Slice",
            [
                x,
                g.const(f"q{i}_sm1", np.array([-1], np.int64)),
                g.const(f"q{i}_end", np.array([2**62], np.int64)),
                axis0,
            ],
        )
    gates = g.op("MatMul", [inputs, g.const(f"qrnn{i}_Wt", _np(rnn.weight_raw).T.copy())])
    gates = g.op("Add", [gates, g.const(f"qrnn{i}_B", _np(rnn.bias))])
    split = g.const(f"q{i}_split", np.array([H, H, H], np.int64))
    z, f, o = g.op("Split", [gates, split], n_out=3, axis=2)
    z, f, o = g.op("Tanh", [z]), g.op("Sigmoid", [f]), g.op("Sigmoid", [o])
    if state:
        c0 = g.op("Squeeze", [state[0], axis0])
    else:  # zeros [batch, H], shaped from the data (the batch size is dynamic)
        z_first = g.op(
            "Slice",
            [
                z,
                g.const(f"q{i}_zs0", np.array([0], np.int64)),
                g.const(f"q{i}_ze1", np.array([1], np.int64)),
                axis0,
            ],
        )
        c0 = g.op("Squeeze", [g.op("Mul", [z_first, zeros_like_first]), axis0])
    c_last, c_all = g.op("Scan", [c0, z, f], n_out=2, num_scan_inputs=2, body=_forget_mult_body(i))
    finals.append(g.op("Unsqueeze", [c_last, axis0]))
    if rnn.window == 2:
        finals.append(last)
    return g.op("Mul", [o, c_all]), finals


def _encoder(g: _Graph, body, ids: str, seq_lens: str | None, state: list[str] | None):
    """Embedding + recurrent layers, time-major inside; returns ([batch, seq, emb], final
    states: (h, c) per LSTM layer; c, and the last input for window 2, per QRNN layer)."""
    x = g.op("Gather", [g.const("emb_weight", _np(body.encoder.weight)), ids], axis=0)
    x = g.op("Transpose", [x], perm=[1, 0, 2])
    finals = []
    taken = 0
    for i, rnn in enumerate(body.rnns):
        n = len(state_widths(rnn))
        layer_state = [] if state is None else state[taken : taken + n]
        taken += n
        if body.config.arch == "qrnn":
            x, out = _qrnn_layer(g, i, rnn, x, layer_state)
        else:
            x, out = _lstm_layer(g, i, rnn, x, seq_lens, layer_state)
        finals += out
    return g.op("Transpose", [x], perm=[1, 0, 2]), finals


def state_widths(rnn) -> list[int]:
    """The widths of a layer's state tensors in the LM graph ([1, batch, width] each)."""
    if hasattr(rnn, "window"):
        return [rnn.n_out] + ([rnn.n_in] if rnn.window == 2 else [])
    return [rnn.n_out, rnn.n_out]


def _head(g: _Graph, head, x: str) -> str:
    """The LinBnDrop stack in eval form: batchnorm folded to x * scale + shift, no dropout."""
    import torch

    for k, m in enumerate(head.layers.modules()):
        if isinstance(m, torch.nn.BatchNorm1d):
            scale = _np(m.weight) / np.sqrt(_np(m.running_var) + m.eps)
            shift = _np(m.bias) - _np(m.running_mean) * scale
            x = g.op("Mul", [x, g.const(f"bn{k}_scale", scale.astype(np.float32))])
            x = g.op("Add", [x, g.const(f"bn{k}_shift", shift.astype(np.float32))])
        elif isinstance(m, torch.nn.Linear):
            x = g.op("MatMul", [x, g.const(f"lin{k}_wt", _np(m.weight).T.copy())])
            if m.bias is not None:
                x = g.op("Add", [x, g.const(f"lin{k}_b", _np(m.bias))])
        elif isinstance(m, torch.nn.ReLU):
            x = g.op("Relu", [x])
    return x


def classifier_graph(model) -> Any:
    import torch
    from onnx import TensorProto, helper

    g = _Graph()
    i64 = TensorProto.INT64
    seq_lens = g.op("Cast", ["lengths"], to=TensorProto.INT32)
    out, _ = _encoder(g, model.body, "ids", seq_lens, None)
    # masked concat pooling over each row's positions [pooled_from, length)
    width = g.op("Gather", [g.op("Shape", ["ids"]), g.const("one_i", np.array(1, np.int64))])
    pos = g.op(
        "Range",
        [g.const("zero_s", np.array(0, np.int64)), width, g.const("step", np.array(1, np.int64))],
    )
    pos = g.op("Unsqueeze", [pos, g.const("axis0", np.array([0], np.int64))])  # [1, seq]
    axis1 = g.const("axis1", np.array([1], np.int64))
    lens = g.op("Unsqueeze", ["lengths", axis1])  # [batch, 1]
    start = g.op("Unsqueeze", ["pooled_from", axis1])
    valid = g.op("And", [g.op("GreaterOrEqual", [pos, start]), g.op("Less", [pos, lens])])
    last = g.op("Equal", [pos, g.op("Sub", [lens, g.const("one_v", np.array(1, np.int64))])])
    axis2 = g.const("axis2", np.array([2], np.int64))
    valid3, last3 = g.op("Unsqueeze", [valid, axis2]), g.op("Unsqueeze", [last, axis2])
    zero = g.const("zero_f", np.array(0.0, np.float32))
    ninf = g.const("ninf_f", np.array(-np.inf, np.float32))
    last_p = g.op("ReduceSum", [g.op("Where", [last3, out, zero]), axis1], keepdims=0)
    max_p = g.op("ReduceMax", [g.op("Where", [valid3, out, ninf])], axes=[1], keepdims=0)
    sum_p = g.op("ReduceSum", [g.op("Where", [valid3, out, zero]), axis1], keepdims=0)
    count = g.op("ReduceSum", [g.op("Cast", [valid], to=TensorProto.FLOAT), axis1], keepdims=1)
    pooled = g.op("Concat", [last_p, max_p, g.op("Div", [sum_p, count])], axis=1)
    g.nodes.append(helper.make_node("Identity", [_head(g, model.head, pooled)], ["logits"]))
    inputs = [
        helper.make_tensor_value_info("ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("lengths", i64, ["batch"]),
        helper.make_tensor_value_info("pooled_from", i64, ["batch"]),
    ]
    n_classes = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1].out_features
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])]
    return _model(g, "fastulm_classifier", inputs, outputs)


def lm_graph(model) -> Any:
    from onnx import TensorProto, helper

    g = _Graph()
    body = model.body
    sizes = [w for r in body.rnns for w in state_widths(r)]
    state_in = [f"state_in_{k}" for k in range(len(sizes))]
    out, finals = _encoder(g, body, "ids", None, state_in)
    dec = model.head.decoder
    logits = g.op("MatMul", [out, g.const("dec_wt", _np(dec.weight).T.copy())])
    logits = g.op("Add", [logits, g.const("dec_b", _np(dec.bias))])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    for k, name in enumerate(finals):
        g.nodes.append(helper.make_node("Identity", [name], [f"state_out_{k}"]))
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])]
    inputs += [
        helper.make_tensor_value_info(n, f32, [1, "batch", sizes[k]])
        for k, n in enumerate(state_in)
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", len(dec.bias)])]
    outputs += [
        helper.make_tensor_value_info(f"state_out_{k}", f32, [1, "batch", sizes[k]])
        for k in range(len(finals))
    ]
    return _model(g, "fastulm_language_model", inputs, outputs)


def _model(g: _Graph, name: str, inputs, outputs):
    import onnx
    from onnx import helper

    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastulm"
    )
    model.ir_version = 8  # what onnxruntime >= 1.14 reads
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------ writing the folder


def _not_an_export(path: Path) -> str | None:
    """What in ``path`` an export did not write (an interrupted write's ``.NAME.*.tmp`` is
    one of its own)."""
    names = [p.name for p in path.iterdir()]
    other = sorted(n for n in names if n not in FILES and not (n[0] == "." and n.endswith(".tmp")))
    return f"it holds {other[0]!r}" if other else None


def export_run(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``run_dir``'s model as an export folder (see the module docstring)."""
    from fastulm.files import atomic_folder, atomic_write, check_replaceable, write_text
    from fastulm.run_reader import load_run
    from fastulm.scores import Task

    out_dir = Path(out_dir)
    replaceable = dict(force=force, foreign=_not_an_export, what="model export", sources=[run_dir])
    check_replaceable(out_dir, **replaceable)
    run = load_run(run_dir, "cpu")
    try:
        import onnx
    except ImportError:
        raise ValueError("exporting needs the onnx package (pip install fastulm[onnx])") from None
    cfg = run.model.config
    settings: dict[str, Any] = {
        "format": FORMAT,
        "kind": run.kind,
        "tokenizer": "fastulm: fastai 2.8.12 default rules, spaCy English word splitting",
        "rules": RULES,
        "bos": "xxbos",
        "unk_id": 0,
        "pad_id": cfg.pad_token,
        "bptt": cfg.bptt,
        "max_len": cfg.max_len,
        "backwards": bool(run.config.get("settings", {}).get("backwards", False)),
        "text_cols": run.config.get("settings", {}).get("text_cols"),
        "opset": OPSET,
    }
    if run.kind == "clas":
        model = classifier_graph(run.model)
        task = Task.from_config(run.config, str(Path(run_dir) / "config.json"))
        settings["n_classes"] = run.config["n_classes"]
        labels = {
            "names": run.label_names,
            "task": task.kind,
            "label_delim": task.label_delim,
            "threshold": task.threshold,
        }
    else:
        model = lm_graph(run.model)
        settings["state_sizes"] = [r.n_out for r in run.model.body.rnns]
        settings["state_widths"] = [w for r in run.model.body.rnns for w in state_widths(r)]
        labels = None

    def write(folder: Path) -> None:
        atomic_write(folder / "model.onnx", lambda tmp: onnx.save(model, tmp))
        write_text(folder / "vocab.json", json.dumps(run.vocab, ensure_ascii=False) + "\n")
        if labels is not None:
            write_text(folder / "labels.json", json.dumps(labels, indent=1) + "\n")
        written = ["model.onnx", "vocab.json"] + (["labels.json"] if labels is not None else [])
        settings["sha256"] = {name: file_sha256(folder / name) for name in written}
        write_text(folder / "tokenizer.json", json.dumps(settings, indent=1) + "\n")

    # a new folder renamed into place: a failed or killed export keeps the earlier one whole
    atomic_folder(out_dir, write, check=lambda: check_replaceable(out_dir, **replaceable))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fastulm.weights import CheckpointError

    try:
        export_run(args.run_dir, args.out_dir, args.force)
    except (CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

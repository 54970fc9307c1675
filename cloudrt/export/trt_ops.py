"""TensorRT's ONNX operator support list, as data, and a check of an ONNX graph against it.

Source: the ONNX-TensorRT parser's support matrix, ``docs/operators.md`` in github.com/onnx/onnx-tensorrt,
the revision titled "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24",
read 2026-11 (with that repository's CHANGELOG.md for the TensorRT 10.x release that added each newer
operator). TensorRT 10.0 documents opset 9 to 20. Only the operators marked ``Y`` are listed here, with
the restrictions that can matter for an exported vision model.

Jetson boards run older TensorRT 10.x releases, so the default check is against what TensorRT 10.0
already parses: operators added in a later 10.x release carry that release in :data:`ADDED_IN`.
Operators whose first 10.x release we could not confirm are conservatively attributed to 10.15 (the
list they were read from). This module imports ``onnx`` only when a check runs (no torch).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

SOURCE = "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
SOURCE_VERSION = "10.15"
#: Default-domain opset range the ONNX parser accepts, per TensorRT release (from the same documents).
OPSET_RANGE: dict[str, tuple[int, int]] = {"10.0": (9, 20), "10.15": (9, 24)}

#: Operators the TensorRT 10.15 ONNX parser supports (``Y``), with the documented restriction if any.
TRT_ONNX_OPS: dict[str, str] = {
    "Abs": "", "Acos": "", "Acosh": "", "Add": "", "And": "", "ArgMax": "", "ArgMin": "",
    "Asin": "", "Asinh": "", "Atan": "", "Atanh": "",
    "Attention": "Q, K, V and attn_mask 4D; no past_key/past_value/present outputs; no softcap",
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
    "BatchNormalization": "", "BlackmanWindow": "", "Cast": "", "CastLike": "", "Ceil": "", "Celu": "",
    "Clip": "", "Concat": "",
    "Constant": "sparse_value, value_string and value_strings attributes unsupported",
    "ConstantOfShape": "", "Conv": "", "ConvTranspose": "", "Cos": "", "Cosh": "",
    "CumSum": "axis must be a build-time constant",
    "DeformConv": "1D or 2D spatial input; symmetric pads",
    "DepthToSpace": "", "DequantizeLinear": "x_zero_point must be zero", "Div": "",
    "Dropout": "is_training must be an initializer that is False",
    "Einsum": "", "Elu": "", "Equal": "", "Erf": "", "Exp": "", "Expand": "",
    "EyeLike": "input must have static dimensions", "Flatten": "", "Floor": "", "Gather": "",
    "GatherElements": "", "GatherND": "", "Gelu": "", "Gemm": "", "GlobalAveragePool": "",
    "GlobalLpPool": "", "GlobalMaxPool": "", "Greater": "", "GreaterOrEqual": "",
    "GridSample": "4D input", "GroupNormalization": "",
    "GRU": "bidirectional: same activations both directions",
    "HammingWindow": "", "HannWindow": "", "HardSigmoid": "", "HardSwish": "",
    "Hardmax": "axis dimension must be a build-time constant", "Identity": "",
    "If": "branch outputs of the same rank with different names", "ImageScaler": "",
    "InstanceNormalization": "", "IsInf": "", "IsNaN": "",
    "LayerNormalization": "only the first output Y", "LeakyRelu": "", "Less": "", "LessOrEqual": "",
    "Log": "", "LogSoftmax": "",
    "Loop": "scan output length static; loop-carried shapes constant across iterations",
    "LRN": "", "LSTM": "bidirectional: same activations; input_forget=0; layout=0",
    "LpNormalization": "", "LpPool": "dilations empty or all ones", "MatMul": "", "Max": "",
    "MaxPool": "2D or 3D pooling only; no Indices output; dilations empty or all ones",
    "Mean": "", "MeanVarianceNormalization": "", "Min": "", "Mish": "", "Mod": "", "Mul": "",
    "Neg": "", "NonMaxSuppression": "", "NonZero": "", "Not": "",
    "OneHot": "depth must be a build-time constant", "Or": "", "Pad": "", "ParametricSoftplus": "",
    "Pow": "", "PRelu": "", "QuantizeLinear": "y_zero_point must be 0",
    "RandomNormal": "seed ignored", "RandomNormalLike": "seed ignored", "RandomUniform": "seed ignored",
    "RandomUniformLike": "seed ignored", "Range": "", "Reciprocal": "",
    "ReduceL1": "axes must be an initializer", "ReduceL2": "axes must be an initializer",
    "ReduceLogSum": "axes must be an initializer", "ReduceLogSumExp": "axes must be an initializer",
    "ReduceMax": "axes must be an initializer", "ReduceMean": "axes must be an initializer",
    "ReduceMin": "axes must be an initializer", "ReduceProd": "axes must be an initializer",
    "ReduceSum": "axes must be an initializer", "ReduceSumSquare": "axes must be an initializer",
    "Relu": "", "Reshape": "",
    "Resize": "modes nearest/linear; no antialias; aspect ratio policy stretch",
    "ReverseSequence": "", "RMSNormalization": "", "RNN": "bidirectional: same activations",
    "RoiAlign": "", "RotaryEmbedding": "position_ids must be INT64", "Round": "",
    "STFT": "frame_step and window initializers; real input", "ScaledTanh": "", "Scan": "",
    "Scatter": "", "ScatterElements": "", "ScatterND": "reduction must be none", "Selu": "",
    "Shape": "", "Shrink": "", "Sigmoid": "", "Sign": "", "Sin": "", "Sinh": "", "Size": "",
    "Slice": "", "Softmax": "", "Softplus": "", "Softsign": "", "SpaceToDepth": "", "Split": "",
    "Sqrt": "", "Squeeze": "axes must be resolvable to a constant", "Sub": "", "Sum": "", "Tan": "",
    "Tanh": "", "TensorScatter": "past_cache and update 4D; axis -2", "ThresholdedRelu": "",
    "Tile": "", "TopK": "sorted must be 1; K < 3840", "Transpose": "", "Trilu": "",
    "Unsqueeze": "axes must be resolvable to a constant", "Upsample": "", "Where": "", "Xor": "",
}

#: Operators the same document marks unsupported (``N``).
TRT_UNSUPPORTED_OPS: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "Col2Im", "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt",
    "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
})

#: First TensorRT 10.x release whose parser takes the operator, where it is later than 10.0
#: (from onnx-tensorrt CHANGELOG.md; the last three are not in that changelog and are attributed to the
#: list they were read from, to stay on the safe side).
ADDED_IN: dict[str, str] = {
    "DeformConv": "10.1",
    "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4",
    "STFT": "10.5",
    "Attention": "10.14",
    "RotaryEmbedding": "10.15", "RMSNormalization": "10.15", "TensorScatter": "10.15",
    "Gelu": "10.15", "Mish": "10.15", "CastLike": "10.15",
}

#: Operators whose listed input must be a constant (initializer or Constant node) to parse on TRT 10.0.
_CONST_INPUTS: dict[str, tuple[int, ...]] = {
    "Slice": (3,),  # axes: tensor axes only since TensorRT 10.3
    "Squeeze": (1,), "Unsqueeze": (1,), "CumSum": (1,), "TopK": (1,),
    **{op: (1,) for op in TRT_ONNX_OPS if op.startswith("Reduce")},
}


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())


def supported_ops(min_trt: str = "10.0") -> frozenset[str]:
    """Operators every TensorRT release from ``min_trt`` up to 10.15 parses."""
    lo = _ver(min_trt)
    return frozenset(op for op in TRT_ONNX_OPS if _ver(ADDED_IN.get(op, "10.0")) <= lo)


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model), load_external_data=False)
    return model


def _graphs(graph: Any) -> Iterable[Any]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def op_histogram(model: Any) -> Counter[str]:
    """Count of nodes per operator (non-default domains as ``domain::Op``), subgraphs included."""
    m = _load(model)
    hist: Counter[str] = Counter()
    for g in _graphs(m.graph):
        for n in g.node:
            hist[n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"] += 1
    return hist


def trt_problems(model: Any, min_trt: str = "10.0") -> list[str]:
    """Reasons the graph would not parse on every TensorRT from ``min_trt`` on; empty when it would.

    Checks: every operator is in the support list (default ONNX domain only), the opset is in the
    parser's range, and the inputs TensorRT needs as build-time constants are constants.
    """
    m = _load(model)
    problems: list[str] = []
    ok = supported_ops(min_trt)
    lo_opset, hi_opset = OPSET_RANGE["10.0" if _ver(min_trt) < (10, 15) else "10.15"]
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx") and not lo_opset <= imp.version <= hi_opset:
            problems.append(f"opset {imp.version} outside TensorRT {min_trt}'s range {lo_opset}-{hi_opset}")
    for op, count in sorted(op_histogram(m).items()):
        if op not in ok:
            why = (f"added in TensorRT {ADDED_IN[op]}" if op in ADDED_IN
                   else "not supported by TensorRT's ONNX parser")
            problems.append(f"{op} x{count}: {why}")
    for g in _graphs(m.graph):
        consts = {i.name for i in g.initializer}
        consts |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
        for n in g.node:
            for idx in _CONST_INPUTS.get(n.op_type, ()):
                if idx < len(n.input) and n.input[idx] and n.input[idx] not in consts:
                    problems.append(f"{n.op_type} node {n.name!r}: input {idx} must be a constant")
            if n.op_type == "LayerNormalization" and any(o for o in n.output[1:]):
                problems.append(f"LayerNormalization node {n.name!r}: only output Y is supported")
    return problems

"""Mixed-precision (FP16) ONNX graphs with onnxconverter-common's float16 converter.

Weights, convolutions and matmuls go to FP16; the numerically sensitive parts stay FP32:
LayerNorm, Softmax, reductions, power/square roots, and the global residual add of eq. 12 (the
prediction is ``correction + optical``: the cloudy input must be added at full precision or the whole
output inherits FP16 rounding). Graph inputs and outputs stay FP32, so clients do not change.

One fix-up follows the converter: when a blocked node writes a graph output directly (here the global
residual add writes ``optical_clear``), onnxconverter-common 1.16 re-types that output to FP16 and
appends a Cast to FP16, even with ``keep_io_types=True``. :func:`_restore_fp32_outputs` removes that
trailing Cast so the output stays the FP32 result of the FP32 add. Tests check the result
(:func:`fp32_islands`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from cloudrt._deps import dist_version
from cloudrt.errors import ModelError

#: Operator types kept in FP32 (inputs cast up, outputs cast back down).
FP32_OPS: tuple[str, ...] = (
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
    "Pow", "Sqrt", "Reciprocal",
)
#: Name the model gives its eq. 12 add (``cloudrt.model.blocks.GlobalResidual`` as module ``global_residual``).
GLOBAL_RESIDUAL_NODE = "/global_residual/Add"


def find_global_residual(model: Any, optical_input: str = "optical") -> str:
    """Name of the global residual Add: the named node, else the Add that reads the graph input
    ``optical_input`` and writes a graph output. :class:`ModelError` if there is none."""
    g = model.graph
    outputs = {o.name for o in g.output}
    named = [n for n in g.node if n.op_type == "Add" and n.name == GLOBAL_RESIDUAL_NODE]
    if named:
        return named[0].name
    cands = [n for n in g.node if n.op_type == "Add" and optical_input in n.input
             and any(o in outputs for o in n.output)]
    if len(cands) != 1:
        raise ModelError(
            f"cannot find the global residual Add (reads {optical_input!r}, writes a graph output) in the "
            f"ONNX graph ({len(cands)} candidates); export it with `cloudrt export`."
        )
    if not cands[0].name:
        cands[0].name = "global_residual_add"
    return cands[0].name


def convert_fp16(model: Any, *, extra_fp32_ops: Iterable[str] = (), extra_fp32_nodes: Iterable[str] = ()) -> Any:
    """FP32 ``onnx.ModelProto`` -> mixed-precision FP16 model with FP32 inputs/outputs (new object).

    Sets ``metadata_props['precision'] = 'fp16'`` and records the FP32 op list in ``fp16_fp32_ops``.
    """
    import onnx
    from onnxconverter_common import float16

    src = onnx.ModelProto()
    src.CopyFrom(model)
    residual = find_global_residual(src)
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS) | set(extra_fp32_ops))
    block_nodes = [residual, *extra_fp32_nodes]
    out_types = {o.name: o.type.tensor_type.elem_type for o in src.graph.output}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the float32 number ... will be truncated" per weight
        m16 = float16.convert_float_to_float16(
            src, keep_io_types=True, op_block_list=block_ops, node_block_list=block_nodes,
            min_positive_val=1e-7, max_finite_val=1e4,
        )
    _restore_fp32_outputs(m16, out_types)
    props = {p.key: p.value for p in m16.metadata_props}
    props["precision"] = "fp16"
    props["fp16_fp32_ops"] = ",".join(sorted(set(FP32_OPS) | set(extra_fp32_ops)))
    props["fp16_fp32_nodes"] = ",".join(block_nodes)
    props["fp16_converter"] = f"onnxconverter-common {dist_version('onnxconverter-common', 'unknown')} float16"
    onnx.helper.set_model_props(m16, props)
    onnx.checker.check_model(m16)
    return m16


def _restore_fp32_outputs(model: Any, out_types: dict[str, int]) -> None:
    """Undo the converter's FP16 re-typing of graph outputs that were FP32 (see the module docstring)."""
    from onnx import TensorProto

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    for out in g.output:
        if out_types.get(out.name) != TensorProto.FLOAT or out.type.tensor_type.elem_type == TensorProto.FLOAT:
            continue
        cast = producer.get(out.name)
        to = {a.name: a.i for a in cast.attribute}.get("to") if cast is not None else None
        if cast is None or cast.op_type != "Cast" or to != TensorProto.FLOAT16:
            raise ModelError(f"FP16 conversion left output {out.name!r} in FP16 unexpectedly; report this.")
        src = cast.input[0]
        upstream = producer.get(src)
        still_used = any(src in n.input for n in g.node if n is not cast)
        if upstream is None or still_used:  # keep the tensor; just cast to FP32 instead
            for a in cast.attribute:
                if a.name == "to":
                    a.i = TensorProto.FLOAT
        else:  # the blocked node writes the output directly, in FP32
            upstream.output[list(upstream.output).index(src)] = out.name
            g.node.remove(cast)
            for vi in [v for v in g.value_info if v.name in (src, out.name)]:
                g.value_info.remove(vi)
        out.type.tensor_type.elem_type = TensorProto.FLOAT


def fp32_islands(model: Any) -> dict[str, Any]:
    """Which node types compute in FP32 vs FP16 (via ONNX shape inference of the first input's type)."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    fp32: dict[str, int] = {}
    fp16: dict[str, int] = {}
    for n in g.node:
        if n.op_type in ("Cast", "Constant", "Shape") or not n.input:
            continue
        t = types.get(n.input[0])
        bucket = fp32 if t == TensorProto.FLOAT else fp16 if t == TensorProto.FLOAT16 else None
        if bucket is not None:
            bucket[n.op_type] = bucket.get(n.op_type, 0) + 1
    return {"fp32": fp32, "fp16": fp16}

"""``cloudrt bench``: eager PyTorch against every deployment path, on the same inputs, in one run.

Paths (``backend`` / ``precision``), each on ``device``:

=======================  =========  ==========================================================
backend                  precision  what runs
=======================  =========  ==========================================================
torch-eager              fp32       the model as trained, ``torch.inference_mode`` (the baseline)
torch-eager              fp16       ``torch.autocast(float16)`` (GPU only)
torch-compile            fp32/fp16  ``torch.compile(model)`` (GPU; on CPU only when asked for)
onnxruntime-cpu          fp32/fp16  exported ONNX (:func:`cloudrt.export.export_onnx`), CPU EP
onnxruntime-cuda         fp32/fp16  the same files on the CUDA EP, inputs and outputs bound on the GPU
onnxruntime-tensorrt     fp32/fp16  the FP32 file on the TensorRT EP (``trt_fp16_enable`` for fp16)
tensorrt                 fp32/fp16  engines from :func:`cloudrt.export.get_or_build_engine`
=======================  =========  ==========================================================

Method: one input batch per batch size (uniform [0, 1], fixed seed, model units); every path is warmed
up, then timed for ``rounds`` rounds that are interleaved across paths (round ``r`` visits the paths in
an order rotated by ``r``), so a noisy machine slows them alike; the reported time is the median. Each
call is synchronized (``torch.cuda.synchronize``, ONNX Runtime's synchronous ``run``). Torch and ONNX
Runtime get the same number of CPU threads, and both pools wait passively (ONNX Runtime
``allow_spinning=0``, OpenMP ``OMP_WAIT_POLICY=PASSIVE``; see ``timing._passive_openmp``). ``speedup`` is
eager FP32's median time per tile divided by the path's, same device, same batch, same run; ``max_err``
the largest absolute difference from eager FP32's output on the same input, in model units
(reflectance / 10000, [0, 1]).

FLOPs per tile are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products, 2 FLOPs per multiply-add; element-wise ops are not counted). On a GPU of known peak the rows
carry ``peak_share``: achieved FLOP/s over the device's dense tensor-core peak for the precision (TF32
for fp32 when cuDNN/cuBLAS allow TF32), the compute roof of the roofline.

This module imports torch, ONNX Runtime and TensorRT only when a path needs them: without torch the
eager rows are skipped with the reason, and an ``.onnx`` ``model`` still runs on ONNX Runtime.

Modules: :mod:`.probe` (options, machine, which paths run), :mod:`.load` (the model and its ONNX files),
:mod:`.runners` (one runner per path), :mod:`.timing` (the interleaved run), :mod:`.report` (table, JSON).
"""

from __future__ import annotations

from cloudrt.bench.load import ModelSpec, count_flops, export_paths, load_model
from cloudrt.bench.probe import (
    ALL_PATHS,
    BASELINE,
    ROW_KEYS,
    match_paths,
    parse_batches,
    plan_paths,
    resolve_device,
    system_info,
)
from cloudrt.bench.report import fmt, format_table, table_columns, to_json
from cloudrt.bench.runners import make_inputs, session_options
from cloudrt.bench.timing import run_bench

__all__ = [
    "ALL_PATHS", "BASELINE", "ROW_KEYS", "ModelSpec", "count_flops", "export_paths", "fmt", "format_table",
    "load_model", "make_inputs", "match_paths", "parse_batches", "plan_paths", "resolve_device", "run_bench",
    "session_options", "system_info", "table_columns", "to_json",
]

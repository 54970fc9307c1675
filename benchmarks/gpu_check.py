"""GPU rows of issue 12, in one short run: model throughput per 256 tile, roofline share, a whole granule
end to end on the torch backend, and a few AMP training steps. Writes ``gpu_check.json`` and
``gpu_check.md`` under ``--out`` (default ``$OUT``, else ``./gpu-check-out``).

Needs only torch, safetensors, numpy and scipy (no rasterio, kornia, TensorRT or onnxruntime; no network):
the granule is synthetic, made on the machine, and run through :meth:`cloudrt.runtime.Runtime.predict` on
arrays (normalize, tile, blend, cloud mask, composite: the runtime's host pipeline, without file I/O).
cloudrt imports rasterio only where it opens files, so the runtime imports and runs here without it.

    python benchmarks/gpu_check.py                       # on the GPU machine (see gpu_check.sh)
    python benchmarks/gpu_check.py --tiny --device cpu   # seconds, on a CPU: checks the script itself

Sections run in order of value and each checks ``--budget-s`` first; what does not fit is listed under
``skipped`` with the reason. Results are written after every section, so a killed run keeps what it did.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _has(mod: str) -> bool:
    """Whether ``mod`` is importable (a blocked or broken finder counts as absent)."""
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


if not _has("cloudrt"):  # run from a bare checkout: no install needed
    sys.path.insert(0, str(REPO))


# -- imports of cloudrt by name, so a missing optional dependency is reported, not fatal ------------------
def _import_first(*candidates: tuple[str, str]) -> Any:
    errors = []
    for mod, name in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:
            errors.append(f"{mod}.{name}: {e}")
    raise ImportError("; ".join(errors))


def _runtime_cls() -> Any:
    return _import_first(("cloudrt.runtime", "Runtime"))


def _loss_cls() -> Any | None:
    try:
        return _import_first(("cloudrt.train.loss", "CloudAwareLoss"))
    except ImportError:
        return None


# -- peak dense tensor-core TFLOP/s (FP16/BF16, no sparsity), NVIDIA datasheets ---------------------------
# H100 SXM5 / H200: 1979 TFLOPS "with sparsity" -> 989.4 dense; H100 PCIe: 1513 -> 756; A100: 312 dense;
# L4: 242 with sparsity -> 121. TF32 tensor-core peak is half the FP16 one on all of these.
PEAK_SOURCE = ("NVIDIA datasheets (H100/H200, A100, L4), dense = half the 'with sparsity' figure; "
               "TF32 = FP16 / 2")
PEAK_FP16_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H200": 989.4, "A100": 312.0, "L4": 121.0}

MODES = ("fp32", "fp16", "bf16")
TILE_PIXELS = 256 * 256


def gpu_key(name: str, sms: int | None = None) -> str | None:
    """Key of :data:`PEAK_FP16_TFLOPS` for a CUDA device name (H100 SXM has 132 SMs, PCIe 114), or None."""
    u = name.upper()
    if "H200" in u:
        return "H200"
    if "H100" in u:
        if "PCIE" in u or sms == 114:
            return "H100 PCIe"
        return None if "NVL" in u else "H100 SXM"
    if "A100" in u:
        return "A100"
    if u.endswith(" L4") or u == "L4" or " L4 " in u:
        return "L4"
    return None


def peak_tflops(key: str | None, mode: str) -> float | None:
    """Dense tensor-core peak for ``mode`` (fp32 rows run convolutions in TF32: cuDNN's default)."""
    if key is None:
        return None
    p = PEAK_FP16_TFLOPS[key]
    return p / 2 if mode == "fp32" else p


class Budget:
    """Wall-clock budget; sections ask :meth:`fits` before they start."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), float(seconds)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def fits(self, need: float) -> bool:
        return self.left() >= need


class Report:
    """Collects results and rewrites ``gpu_check.json`` / ``.md`` after every section."""

    def __init__(self, out: Path, info: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"system": info, "rows": [], "granule": None, "train": None,
                                     "granule_single": None, "skipped": []}

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"].append({"what": what, "reason": reason})
        print(f"skip {what}: {reason}", flush=True)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


# -- system and model --------------------------------------------------------------------------------------
def system_info(torch: Any, device: Any, args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "device": str(device), "host": platform.node(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "tile": args.tile,
        "kornia": _has("kornia"), "rasterio": _has("rasterio"),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        key = gpu_key(p.name, p.multi_processor_count)
        info.update(gpu=p.name, sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), peak_key=key,
                    peak_tflops={m: peak_tflops(key, m) for m in MODES}, peak_source=PEAK_SOURCE,
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_precision=torch.get_float32_matmul_precision())
    return info


def load_model(torch: Any, weights: Path, device: Any) -> Any:
    """The shipped model: config from the JSON sidecar, weights with safetensors (no unpickling)."""
    from safetensors.torch import load_file

    from cloudrt.model import from_config

    cfg = json.loads(weights.with_suffix(".json").read_text())["config"]
    model = from_config(cfg)
    model.load_state_dict(load_file(str(weights.with_suffix(".safetensors")), device="cpu"))
    return model.to(device).eval()


def count_flops(torch: Any, model: Any, tile: int, device: Any) -> int:
    """FLOPs of one tile (FlopCounterMode: convolutions and matrix products, 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    o = torch.zeros(1, 13, tile, tile, device=device)
    s = torch.zeros(1, 2, tile, tile, device=device)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(o, s)
    return int(fc.get_total_flops())


def _amp(torch: Any, device: Any, mode: str) -> Any:
    if mode == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(torch: Any, fn: Any, device: Any, min_s: float, rounds: int) -> float:
    """Median seconds per call: ``rounds`` rounds of k calls each, k sized so a round takes ~``min_s``."""
    _sync(torch, device)
    t = time.perf_counter()
    fn()
    _sync(torch, device)
    one = max(time.perf_counter() - t, 1e-6)
    k = max(1, min(200, int(min_s / one)))
    times = []
    for _ in range(rounds):
        _sync(torch, device)
        t = time.perf_counter()
        for _ in range(k):
            fn()
        _sync(torch, device)
        times.append((time.perf_counter() - t) / k)
    return float(np.median(times))


def _strict_fp32(torch: Any) -> Any:
    """Context: true FP32 (TF32 off) for the reference output."""
    @contextlib.contextmanager
    def cm() -> Any:
        c, m = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = c, m
    return cm()


def throughput_row(torch: Any, fn: Any, kind: str, mode: str, batch: int, inputs: tuple[Any, Any], ref: Any,
                   flops: int, info: dict[str, Any], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Time ``fn(optical, sar)`` at one batch; compare its output with the strict-FP32 reference."""
    o, s = inputs

    def call() -> Any:
        with torch.inference_mode(), _amp(torch, device, mode):
            return fn(o, s)

    t = time.perf_counter()
    out = call()  # warm-up (for torch.compile: the compilation)
    _sync(torch, device)
    first = time.perf_counter() - t
    call()
    sec = time_calls(torch, call, device, args.min_round_s, args.rounds)
    tps = batch / sec
    peak = (info.get("peak_tflops") or {}).get(mode)
    tflops = flops * tps / 1e12
    return {"kind": kind, "precision": mode, "batch": batch, "tile": args.tile,
            "ms_per_batch": round(sec * 1e3, 3), "tiles_per_s": round(tps, 2),
            "mpix_per_s": round(tps * args.tile**2 / 1e6, 2), "tflops": round(tflops, 3),
            "peak_share": round(tflops / peak, 4) if peak else None,
            "max_err": float((out.float() - ref).abs().max()), "first_call_s": round(first, 2)}


def run_throughput(torch: Any, model: Any, kind: str, modes: list[str], flops: int, rep: Report,
                   budget: Budget, args: argparse.Namespace, device: Any) -> None:
    """Rows for ``kind`` (``eager`` or ``compile``) x ``modes`` x ``args.batches`` (inputs on the device)."""
    fn = model
    if kind == "compile":
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    gen = torch.Generator(device="cpu").manual_seed(0)
    for mode in modes:
        if kind == "compile":  # a fresh compile per precision (automatic dynamic batch after the 2nd shape)
            torch._dynamo.reset()
            fn = torch.compile(model, mode=args.compile_mode, backend=args.compile_backend)
        for i, b in enumerate(args.compile_batches if kind == "compile" else args.batches):
            need = args.compile_need_s if kind == "compile" and i < 2 else args.row_need_s
            what = f"{kind} {mode} batch {b}"
            if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
                rep.skip(what, "this GPU has no BF16 support")
                continue
            if not budget.fits(need + args.reserve_s):
                rep.skip(what, f"budget: {budget.left():.0f} s left, a row needs about {need + args.reserve_s:.0f}")
                continue
            o = torch.rand(b, 13, args.tile, args.tile, generator=gen).to(device)
            s = torch.rand(b, 2, args.tile, args.tile, generator=gen).to(device)
            with torch.inference_mode(), _strict_fp32(torch):
                ref = model(o, s).float()
            try:
                row = throughput_row(torch, fn, kind, mode, b, (o, s), ref, flops, rep.data["system"], args,
                                     device)
            except Exception as e:  # noqa: BLE001 - a failed path is a result (e.g. no compiler for inductor)
                rep.skip(f"{kind} {mode} batch >= {b}", f"failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                break
            rep.data["rows"].append(row)
            print(_row_line(row), flush=True)
            del o, s, ref
        rep.save()


def _row_line(r: dict[str, Any]) -> str:
    share = f"{100 * r['peak_share']:.1f} %" if r.get("peak_share") is not None else "-"
    return (f"{r['kind']:8s} {r['precision']} b{r['batch']:<3d} {r['ms_per_batch']:9.2f} ms "
            f"{r['tiles_per_s']:9.1f} tiles/s  {r['tflops']:7.2f} TFLOP/s  roof {share}  err {r['max_err']:.1e}")


# -- whole granule -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)  # the granule's two runs share one scene (the arrays are only read)
def synthetic_scene(h: int, w: int, seed: int = 0, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A (13, h, w) uint16 DN / (2, h, w) float32 dB scene: a ``block``-sized pattern of smooth land and
    bright cloud blobs (~40 % cover, detected by the paper mask) repeated over the scene."""
    rng = np.random.default_rng(seed)
    bh, bw = min(block, h), min(block, w)

    def smooth(n: int, cell: int = 64) -> np.ndarray:
        lo = rng.standard_normal((n, -(-bh // cell) + 1, -(-bw // cell) + 1)).astype(np.float32)
        return np.kron(lo, np.ones((cell, cell), np.float32))[:, :bh, :bw]

    land = 1200 + 500 * smooth(13) + 60 * rng.standard_normal((13, bh, bw)).astype(np.float32)
    land[1:4] *= 0.6  # visible bands darker than the red edge / NIR
    cloud = smooth(1)[0] > 0.25
    sky = 5500 + 800 * smooth(1) + 80 * rng.standard_normal((1, bh, bw)).astype(np.float32)
    opt_b = np.where(cloud[None], sky, land).clip(1, 10000).astype(np.uint16)
    sar_b = np.stack([-12 + 3 * smooth(1)[0], -19 + 3 * smooth(1)[0]]).astype(np.float32)
    opt, sar = np.empty((13, h, w), np.uint16), np.empty((2, h, w), np.float32)
    for y in range(0, h, bh):
        for x in range(0, w, bw):
            yy, xx = min(bh, h - y), min(bw, w - x)
            opt[:, y : y + yy, x : x + xx] = opt_b[:, :yy, :xx]
            sar[:, y : y + yy, x : x + xx] = sar_b[:, :yy, :xx]
    return opt, sar


class _Amp:
    """A module running ``model`` under autocast (FP16/BF16), returning float32: the torch backend's model."""

    def __new__(cls, torch: Any, model: Any, mode: str, device: Any) -> Any:
        class AmpModel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model
                self.size_divisor = getattr(model, "size_divisor", 1)
                self.config = getattr(model, "config", {})

            def forward(self, o: Any, s: Any) -> Any:
                with _amp(torch, device, mode):
                    return self.inner(o, s).float()

        return AmpModel()


class _OutOfBudget(Exception):
    pass


def _vm_hwm_mib() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def run_granule(torch: Any, model: Any, rep: Report, budget: Budget, args: argparse.Namespace,
                device: Any, threaded: bool = True, key: str = "granule") -> None:
    """A whole synthetic granule through ``Runtime.predict`` on the torch backend (``threaded``: the host
    pipeline's write-behind thread; model time = time inside the model calls), into ``key``."""
    n = args.granule
    need = args.granule_need_s
    if not budget.fits(need + args.reserve_s):
        rep.skip(f"{key} {n}x{n}", f"budget: {budget.left():.0f} s left, needs about {need + args.reserve_s:.0f}")
        return
    t = time.perf_counter()
    opt, sar = synthetic_scene(n, n)
    res: dict[str, Any] = {"size": n, "precision": args.granule_precision, "synth_s": round(time.perf_counter() - t, 2)}
    spent = [0.0, 0]

    def timed(inner: Any) -> Any:
        def run(o: np.ndarray, s: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            out = inner(o, s)
            spent[0] += time.perf_counter() - t0
            spent[1] += o.shape[0]
            return out
        return run

    try:
        runtime = _runtime_cls()
    except ImportError as e:
        rep.skip(f"{key} {n}x{n}", f"cloudrt.runtime does not import here: {str(e).splitlines()[0]}")
        return
    runner = _Amp(torch, model, args.granule_precision, device) if args.granule_precision != "fp32" else model
    rt = runtime(runner, backend="torch", device=str(device), tile=args.tile, batch=args.granule_batch,
                 threaded=threaded)
    rt.backend.run = timed(rt.backend.run)
    res.update(path="cloudrt.runtime.Runtime.predict", batch=rt.batch, tile=rt.tile, overlap=rt.overlap,
               host_threads="write-behind" if threaded else "single thread")
    stop_at = budget.left() - args.reserve_s
    t = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - t > stop_at:
            raise _OutOfBudget(f"{done} of {total} rows")

    try:
        out = rt.predict(opt, sar, progress=progress)
    except _OutOfBudget as e:
        el = time.perf_counter() - t
        res.update(aborted=f"budget ran out after {el:.1f} s at {e}", seconds=round(el, 2), model_s=spent[0],
                   tiles=spent[1])
        rep.data[key] = res
        rep.save()
        return
    total = time.perf_counter() - t
    step = max(1, n // 1000)  # a strided sample: cheap checks on a 120 MPix scene
    same = out[:, ::step, ::step] == opt[:, ::step, ::step].astype(np.float32)
    res.update(seconds=round(total, 2), model_s=round(spent[0], 2), outside_s=round(total - spent[0], 2),
               outside_share=round(1 - spent[0] / total, 3), tiles=spent[1], tiles_per_s=round(spent[1] / total, 1),
               mpix_per_s=round(n * n / total / 1e6, 2), finite=bool(np.isfinite(out[:, ::step, ::step]).all()),
               unchanged_share=round(float(same.all(axis=0).mean()), 3), peak_rss_mib=_vm_hwm_mib(),
               checksum=float(out[:, ::step, ::step].sum(dtype=np.float64)),
               note="in-memory arrays: normalize, tile, blend, mask, composite; no file I/O")
    rep.data[key] = res
    print(f"{key} {n}x{n}: {total:.1f} s, model {spent[0]:.1f} s, {spent[1]} tiles ({res['path']})", flush=True)
    rep.save()


# -- training steps ----------------------------------------------------------------------------------------
def ssim_map(torch: Any, x: Any, y: Any, window: int = 11, sigma: float = 1.5) -> Any:
    """Per-pixel SSIM (N, C, H, W) as ``kornia.metrics.ssim`` (Gaussian window, reflect padding, data range
    1, eps 1e-12), in plain torch: the loss's SSIM term where kornia is not installed."""
    import torch.nn.functional as F

    x, y = x.float(), y.float()
    k = torch.arange(window, dtype=torch.float32, device=x.device) - window // 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    kern = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    p = window // 2

    def blur(z: Any) -> Any:
        return F.conv2d(F.pad(z, (p, p, p, p), mode="reflect"), kern, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    return num / ((mx**2 + my**2 + c1) * (sxx + syy + c2) + 1e-12)


def cloud_aware_loss(torch: Any, pred: Any, target: Any, cloud: Any, alpha: float = 0.8, lambda1: float = 0.5,
                     lambda2: float = 0.5, window: int = 11) -> Any:
    """Eqs. 17-18 as cloudrt's ``CloudAwareLoss`` (defaults alike), with :func:`ssim_map` for kornia's SSIM."""
    m = cloud.to(torch.float32).unsqueeze(1)
    w = alpha * m + (1.0 - alpha) * (1.0 - m)  # (17)
    mse = (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)
    l_ssim = (1.0 - ssim_map(torch, pred, target, window)).mean(dim=1, keepdim=True)
    return (w * (lambda1 * mse + lambda2 * l_ssim)).mean()  # (18)


def make_loss(torch: Any) -> tuple[Any, str]:
    """cloudrt's CloudAwareLoss (eqs. 17-18) where kornia is installed (it imports kornia), else the same
    equations in this script with a torch-only SSIM."""
    cls = _loss_cls() if _has("kornia") else None
    if cls is not None:
        return cls(), "cloudrt CloudAwareLoss (eqs. 17-18), SSIM from kornia"
    return (lambda p, t, c: cloud_aware_loss(torch, p, t, c),
            "eqs. 17-18 as cloudrt's CloudAwareLoss, SSIM from a torch-only twin of kornia.metrics.ssim "
            "(kornia not installed here; cloudrt's loss module imports it)")


def run_train(torch: Any, weights: Path, rep: Report, budget: Budget, args: argparse.Namespace,
              device: Any) -> None:
    """A few optimizer steps with mixed precision (BF16 where supported, else FP16 + GradScaler, as
    cloudrt.train does on a GPU; FP32 on a CPU)."""
    if not budget.fits(args.train_need_s + args.reserve_s):
        rep.skip("train steps", f"budget: {budget.left():.0f} s left, needs about {args.train_need_s}")
        return
    model = load_model(torch, weights, device).train()
    loss_fn, loss_note = make_loss(torch)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    g = torch.Generator(device="cpu").manual_seed(1)
    b, c = args.train_batch, args.train_crop
    target = torch.rand(b, 13, c, c, generator=g).to(device)
    cloud = (torch.rand(b, 1, c // 16, c // 16, generator=g) > 0.6).float()
    cloud = torch.nn.functional.interpolate(cloud, size=(c, c)).to(device)
    cloudy = target * (1 - cloud) + 0.8 * cloud
    sar = torch.rand(b, 2, c, c, generator=g).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses, times = [], []
    for _ in range(args.train_steps):
        _sync(torch, device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            pred = model(cloudy, sar)
        loss = loss_fn(pred.float(), target, cloud[:, 0] > 0.5)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))  # synchronizes
        times.append(time.perf_counter() - t)
    warm = times[2:] or times
    rep.data["train"] = {
        "steps": len(times), "batch": b, "crop": c, "amp": str(dtype).replace("torch.", "") if cuda else "off (cpu)",
        "grad_scaler": scaler.is_enabled(), "ms_per_step": round(1e3 * float(np.median(warm)), 2),
        "samples_per_s": round(b / float(np.median(warm)), 1), "first_step_s": round(times[0], 2),
        "losses": [round(x, 5) for x in losses], "finite": bool(np.isfinite(losses).all()), "loss": loss_note,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
    }
    print(f"train: {rep.data['train']['ms_per_step']} ms/step, losses {losses}", flush=True)
    rep.save()


# -- report ------------------------------------------------------------------------------------------------
def markdown(d: dict[str, Any]) -> str:
    s = d["system"]
    dev = s.get("gpu") or s["device"]
    lines = [f"# cloudrt GPU check: {dev}", "",
             f"{s['date_utc']}, torch {s['torch']}, CUDA {s.get('cuda')}, host {s['host']}, "
             f"{s['cpu_count']} CPUs. Model {s.get('model')}: {s.get('gflop_per_tile')} GFLOP per "
             f"{s['tile']} tile (FlopCounterMode). Roofline peak: {s.get('peak_key')} "
             f"{s.get('peak_tflops')} TFLOP/s ({s.get('peak_source', 'no GPU')}).", "",
             "| kind | precision | batch | ms/batch | tiles/s | MPix/s | TFLOP/s | roofline | max_err | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        share = f"{100 * r['peak_share']:.1f} %" if r.get("peak_share") is not None else "-"
        lines.append(f"| {r['kind']} | {r['precision']} | {r['batch']} | {r['ms_per_batch']} | {r['tiles_per_s']} | "
                     f"{r['mpix_per_s']} | {r['tflops']} | {share} | {r['max_err']:.1e} | {r['first_call_s']} |")
    lines += ["", "max_err: largest absolute difference from strict FP32 (TF32 off) on the same inputs, model "
              "units. fp32 rows run with cuDNN's default TF32 convolutions, so their roofline is the TF32 peak."]
    for key in ("granule", "granule_single", "train"):
        if d.get(key):
            lines += ["", f"**{key}**: " + ", ".join(f"{k} {v}" for k, v in d[key].items())]
    if d["skipped"]:
        lines += ["", "**skipped**:"] + [f"- {x['what']}: {x['reason']}" for x in d["skipped"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    ap.add_argument("--device", default=None, help="cuda (default when visible) or cpu")
    ap.add_argument("--weights", type=Path, default=REPO / "weights" / "carf-demo.safetensors")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke sizes: tile 64, batches 1-2, granule 512")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new rows after this")
    ap.add_argument("--reserve-s", type=float, default=10.0, help="kept free at the end of the budget")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--modes", default="fp32,fp16,bf16")
    ap.add_argument("--compile-modes", default="fp16", help="precisions to torch.compile ('' = none)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    ap.add_argument("--granule", type=int, default=10980, help="granule side in pixels (0 = skip)")
    ap.add_argument("--granule-batch", type=int, default=None, help="tiles per call (runtime default)")
    ap.add_argument("--granule-precision", default=None, choices=MODES, help="default: fp16 on a GPU, else fp32")
    ap.add_argument("--granule-single", action=argparse.BooleanOptionalAction, default=True,
                    help="finally, rerun the granule with a single-threaded host pipeline, budget permitting")
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-crop", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    a = ap.parse_args(argv)
    a.tile, a.rounds, a.min_round_s = 256, 5, 0.2
    a.row_need_s, a.compile_need_s, a.granule_need_s, a.train_need_s = 4.0, 120.0, 150.0, 20.0
    if a.tiny:
        a.tile, a.rounds, a.min_round_s, a.granule = 64, 1, 0.0, min(a.granule, 512) if a.granule else 0
        a.batches = "1,2" if a.batches == ap.get_default("batches") else a.batches
        a.train_steps, a.train_batch, a.train_crop = 2, 2, 64
        a.granule_single = False  # tests/test_scene_threads.py checks threaded == single-threaded
        a.row_need_s, a.compile_need_s, a.granule_need_s, a.train_need_s = 0.5, 2.0, 5.0, 2.0
    a.batches = [int(x) for x in str(a.batches).split(",") if x.strip()]
    a.compile_batches = a.batches[:1] if a.tiny else a.batches  # --tiny: one compile keeps the test short
    a.modes = [m for m in a.modes.split(",") if m]
    a.compile_modes = [m for m in a.compile_modes.split(",") if m]
    for m in a.modes + a.compile_modes:
        if m not in MODES:
            ap.error(f"unknown precision {m!r}; use {', '.join(MODES)}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.granule_precision = args.granule_precision or ("fp16" if device.type == "cuda" else "fp32")
    rep = Report(args.out, system_info(torch, device, args))
    model = load_model(torch, args.weights, device)
    flops = count_flops(torch, model, args.tile, device)
    rep.data["system"].update(model=args.weights.name, preset=model.config.get("preset"),
                              gflop_per_tile=round(flops / 1e9, 3), budget_s=args.budget_s,
                              command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]))
    rep.save()
    print(f"{rep.data['system'].get('gpu', device)}: {flops / 1e9:.2f} GFLOP per {args.tile} tile", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run_throughput(torch, model, "eager", args.modes, flops, rep, budget, args, device)
    if args.granule:
        run_granule(torch, model, rep, budget, args, device)
    else:
        rep.skip("granule", "--granule 0")
    if args.train_steps:
        run_train(torch, args.weights, rep, budget, args, device)
    if args.compile_modes:
        run_throughput(torch, model, "compile", args.compile_modes, flops, rep, budget, args, device)
    if args.granule and args.granule_single:  # last: the same granule with the host pipeline single-threaded
        run_granule(torch, model, rep, budget, args, device, threaded=False, key="granule_single")
    rep.data["system"]["wall_s"] = round(time.perf_counter() - budget.t0, 1)
    rep.save()
    print(markdown(rep.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())

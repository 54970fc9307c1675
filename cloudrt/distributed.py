"""Run a batch of scene pairs on Ray: one task per pair, one model load per worker process.

:func:`run_jobs` sends every :class:`Job` whose output does not exist yet (resumable like the serial
batch) as a Ray task, on a local Ray instance when no address is given or on an existing cluster
(``address="ray://head:10001"`` or ``"auto"`` on a cluster node). Each task calls ``process(state, job)``
where ``state`` comes from ``make_state()`` (e.g. loading the model into a Runtime) **once per worker
process**: workers are reused across tasks (``max_calls=0``, also for GPU tasks, where Ray's default
would start a fresh process, and so reload the model, for every pair) and keep the state in a per-process
cache. With ``gpus_per_task`` Ray reserves that share of a GPU for each task and sets
``CUDA_VISIBLE_DEVICES``, so a runtime that uses "GPU 0" uses the GPU Ray gave it.

Failures are reported per pair (a :class:`JobResult` with ``ok=False`` and a one-line message) and never
stop the other pairs, including a worker process that dies. The processing itself is the caller's, so
outputs are the same files the serial run writes.

Ray is an optional dependency (``pip install 'cloudrt[ray]'``), imported only inside these functions.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudrt.errors import BackendUnavailableError, CloudrtError

RAY_EXTRA = "pip install 'cloudrt[ray]'"


@dataclass(frozen=True)
class Job:
    """One pair to process: a name for reports, the output whose existence means done, and the arguments."""

    name: str
    output: Path
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    name: str
    ok: bool
    message: str = ""
    worker: str = ""
    seconds: float = 0.0
    info: dict[str, Any] | None = None


@dataclass
class BatchReport:
    results: list[JobResult]
    skipped: list[str]
    total: int

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if not r.ok]

    @property
    def done(self) -> list[JobResult]:
        return [r for r in self.results if r.ok]

    def summary(self, where: str = "") -> str:
        into = f" into {where}" if where else ""
        return (f"cloudrt: wrote {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)} of "
                f"{self.total} pairs{into}")


def import_ray() -> Any:
    """``import ray``, or one line naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise BackendUnavailableError(f"--ray needs Ray, which is not installed; {RAY_EXTRA}.") from e
    return ray


# Per worker process: the state (model/runtime) of the current batch, built on the process's first task.
_STATE: dict[str, Any] = {}


def _run_job(key: str, fns: tuple[Callable[[], Any], Callable[[Any, Job], Any]], job: Job) -> JobResult:
    """Ray task body: build the state once per process (per batch ``key``), then process one job."""
    make_state, process = fns
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    try:
        if key not in _STATE:
            _STATE.clear()  # a new batch: drop the previous batch's model
            _STATE[key] = make_state()
        info = process(_STATE[key], job)
    except CloudrtError as e:  # the pair's own problem (bad input): one line, as in the serial batch
        return JobResult(job.name, False, str(e).splitlines()[0], worker, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - anything else is still this pair's failure, not the batch's
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return JobResult(job.name, False, msg, worker, time.perf_counter() - t0)
    return JobResult(job.name, True, "", worker, time.perf_counter() - t0, info if isinstance(info, dict) else None)


def _init(ray: Any, address: str | None, num_cpus: int | None, num_gpus: int | None) -> bool:
    """Connect to ``address`` or start a local instance; True if this call started/connected it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise CloudrtError(
            f"cannot start or reach {where} ({str(e).splitlines()[0]}); check --ray-address "
            "(ray status on the head node shows it)."
        ) from e
    return True


def run_jobs(jobs: Sequence[Job], process: Callable[[Any, Job], Any], make_state: Callable[[], Any], *,
             overwrite: bool = False, address: str | None = None, num_cpus: int | None = None,
             num_gpus: int | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
             on_result: Callable[[JobResult], None] | None = None,
             is_done: Callable[[Job], bool] | None = None) -> BatchReport:
    """Process ``jobs`` as Ray tasks; see the module docstring.

    ``num_cpus`` / ``num_gpus`` size a local instance (default: the machine's); they are ignored when
    connecting to ``address``. ``on_result`` is called on the driver as each pair finishes (in completion
    order); the report lists results in the order of ``jobs``. ``is_done(job)`` says which jobs a resumed
    batch skips (default: those whose output exists; the CLI's also needs the STAC Item with ``--stac``).
    """
    done = is_done if is_done is not None else (lambda j: Path(j.output).exists())
    todo = [j for j in jobs if overwrite or not done(j)]
    names = {j.name for j in todo}
    skipped = [j.name for j in jobs if j.name not in names]
    if not todo:
        return BatchReport([], skipped, len(jobs))
    ray = import_ray()
    started = _init(ray, address, num_cpus, num_gpus)
    try:
        task = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_calls=0, max_retries=1,
                          retry_exceptions=False)(_run_job)
        key = uuid.uuid4().hex
        fns = ray.put((make_state, process))
        refs = {task.remote(key, fns, j): j for j in todo}
        results: dict[str, JobResult] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                job = refs[ref]
                try:
                    res = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a worker that died: this pair failed, go on
                    res = JobResult(job.name, False, f"worker failed: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}")
                results[job.name] = res
                if on_result is not None:
                    on_result(res)
        return BatchReport([results[j.name] for j in todo], skipped, len(jobs))
    finally:
        if started:
            ray.shutdown()

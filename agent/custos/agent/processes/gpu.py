"""Which processes use a GPU, through NVML where the host has it (the nvml extra)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("custos.agent.processes")


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process using a GPU, as NVML reports it."""

    pid: int
    gpu_index: int
    gpu_uuid: str
    used_memory: int | None  # bytes; None where the driver does not say


_gpu_note_lock = threading.Lock()
_gpu_noted = False


def _note_no_gpu(reason: str) -> None:
    global _gpu_noted
    with _gpu_note_lock:
        if not _gpu_noted:
            _gpu_noted = True
            log.info("no GPU process attribution: %s", reason)


def gpu_processes() -> list[GpuProcess]:
    """Processes using a GPU, through NVML where present.

    No NVML library, no driver or no GPU is not an error: returns [] and logs
    the reason once per process lifetime.
    """
    try:
        # optional: pynvml comes with the nvml extra (nvidia-ml-py), on GPU hosts only
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        _note_no_gpu("pynvml is not installed")
        return []
    nvml_errors = (getattr(pynvml, "NVMLError", OSError), OSError)
    try:
        pynvml.nvmlInit()
    except nvml_errors as exc:  # no driver, no library, no GPU
        _note_no_gpu(f"NVML unavailable: {exc}")
        return []
    out: list[GpuProcess] = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            seen: set[int] = set()
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(pynvml, getter, None)
                if fn is None:
                    continue
                try:
                    procs = fn(handle)
                except nvml_errors as exc:
                    log.debug("NVML %s on GPU %d: %s", getter, i, exc)
                    continue
                for pr in procs:
                    if pr.pid in seen:
                        continue
                    seen.add(pr.pid)
                    mem = getattr(pr, "usedGpuMemory", None)
                    out.append(GpuProcess(int(pr.pid), i, uuid, int(mem) if isinstance(mem, int) else None))
        if not out and pynvml.nvmlDeviceGetCount() == 0:
            _note_no_gpu("NVML reports no GPU")
    except nvml_errors as exc:
        _note_no_gpu(f"NVML query failed: {exc}")
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except nvml_errors as exc:  # a failed shutdown changes nothing we report
            log.debug("NVML shutdown: %s", exc)
    return out

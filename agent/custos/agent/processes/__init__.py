"""Processes on this host: which hold weight files or GPUs, and stopping them.

:mod:`.holders` finds the processes that hold files open or mapped,
:mod:`.gpu` the ones using a GPU, :mod:`.stop` stops processes with evidence.
"""

from custos.agent.processes.gpu import gpu_processes
from custos.agent.processes.holders import (
    Method,
    Target,
    find_holders,
    inspect_holders,
    parse_cgroup_file,
    parse_container_id,
)
from custos.agent.processes.stop import process_tree, stop_processes

__all__ = [
    "Method",
    "Target",
    "find_holders",
    "gpu_processes",
    "inspect_holders",
    "parse_cgroup_file",
    "parse_container_id",
    "process_tree",
    "stop_processes",
]

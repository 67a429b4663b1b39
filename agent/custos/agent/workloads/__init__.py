"""Supervised workloads (`custos run`): :mod:`.supervisor` (the registry of runs, starting and
stopping them), :mod:`.request` (a checked run request), :mod:`.rundirs` (a run's private
plaintext directory) and :mod:`.process` (starting, tracking and reaping a run's processes)."""

from custos.agent.workloads.process import _DROP_PRIVILEGES, become_subreaper
from custos.agent.workloads.request import RunRequest
from custos.agent.workloads.supervisor import ControlPlaneCalls, Supervisor, Workload, WorkloadView

__all__ = [
    "_DROP_PRIVILEGES",
    "ControlPlaneCalls",
    "RunRequest",
    "Supervisor",
    "Workload",
    "WorkloadView",
    "become_subreaper",
]

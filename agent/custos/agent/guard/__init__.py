"""Kernel-checked opens of plaintext weights (fanotify), with an inotify fallback.

:mod:`.fanotify` is the ctypes layer, :mod:`.policy` who may open what,
:mod:`.responder` answers permission events within a bound (and its watchdog),
:mod:`.notify` the notification and inotify readers, :mod:`.guard` the
:class:`Guard` the daemon runs. Specified in docs/agent.md, "Kernel-checked opens".
"""

from custos.agent.guard.guard import DEGRADED, MODES, Guard, GuardSettings, WorkloadZone, workload_zones
from custos.agent.guard.policy import AllowEntry, Decision, Policy, WorkloadMembers, Zone

__all__ = [
    "DEGRADED",
    "MODES",
    "AllowEntry",
    "Decision",
    "Guard",
    "GuardSettings",
    "Policy",
    "WorkloadMembers",
    "WorkloadZone",
    "Zone",
    "workload_zones",
]

"""Inventory of weight-like files on this host, by content hash.

:mod:`.records` holds the configuration and what a scan yields, :mod:`.formats`
the weight formats recognised by their first bytes, :mod:`.cache` the persistent
hash cache, :mod:`.walk` the scan itself (:class:`Scanner`) and :mod:`.watch`
the change watcher between full scans (:class:`Watcher`).
"""

from custos.agent.scanner.records import (
    CUSTOS_MAGIC,
    DEFAULT_EXCLUDE,
    DEFAULT_MIN_SIZE,
    WEIGHT_SUFFIXES,
    FileRecord,
    Hasher,
    ScanConfig,
    ScanProblem,
    ScanResult,
)
from custos.agent.scanner.walk import Scanner, lower_thread_priority
from custos.agent.scanner.watch import Watcher

__all__ = [
    "CUSTOS_MAGIC",
    "DEFAULT_EXCLUDE",
    "DEFAULT_MIN_SIZE",
    "WEIGHT_SUFFIXES",
    "FileRecord",
    "Hasher",
    "ScanConfig",
    "ScanProblem",
    "ScanResult",
    "Scanner",
    "Watcher",
    "lower_thread_priority",
]

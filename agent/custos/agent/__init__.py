"""The host agent's local engine: inventory scanning, process attribution, matching.

Everything here runs on the host and talks to no network. The daemon calls
:class:`~custos.agent.scanner.Scanner` for file inventory,
:mod:`custos.agent.processes` for which processes hold those files, and
:func:`~custos.core.matching.match_inventory` to turn both into custody findings.
"""

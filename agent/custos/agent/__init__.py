"""The host agent (`custos agent run`): inventory, process attribution, supervised runs, halts.

The daemon (:mod:`custos.agent.daemon`) keeps the custody stream and lease with
the control plane, inventories weight files (:mod:`custos.agent.scanner`) and
the processes holding them (:mod:`custos.agent.processes`), reports both
(:mod:`custos.agent.inventory`), and halts and fails closed (:mod:`custos.agent.halt`).
"""

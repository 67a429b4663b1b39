"""`custos model register|list|show|policy`: models, their covered status and custody policy."""

from __future__ import annotations

import argparse
from typing import Any

from custos.cli.common import connect
from custos.cli.output import Out, table, ts
from custos.client.registry import get_model, list_models, register_model, set_custody_policy
from custos.errors import InvalidInput
from custos.v1 import registry_pb2


def model_json(m: registry_pb2.Model) -> dict[str, Any]:
    d = {
        "name": m.name, "owner": m.owner, "training_flops": m.training_flops,
        "benchmark_equivalence": m.benchmark_equivalence, "covered": m.covered,
        "state": registry_pb2.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower(),
        "transit_key": m.transit_key, "created_at": ts(m.created_at_unix_ns),
        "created_by": m.created_by, "drill": m.drill, "artifacts": list(m.artifact_ids),
        "exemption": None,
    }
    if m.HasField("exemption"):
        d["exemption"] = {"basis": m.exemption.basis, "date": m.exemption.date,
                          "certifier": m.exemption.certifier}
    return d


def _parse_flops(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InvalidInput(f"bad --training-flops {text!r}: want a number such as 3.1e26") from None
    if v != v or v in (float("inf"), float("-inf")) or v < 0:
        raise InvalidInput("--training-flops must be a finite number >= 0")
    return v


def cmd_model_register(ns: argparse.Namespace, out: Out) -> int:
    ex = None
    if ns.exemption_basis or ns.exemption_date or ns.exemption_certifier:
        ex = registry_pb2.LimitedDutyExemption(basis=ns.exemption_basis or "",
                                               date=ns.exemption_date or "",
                                               certifier=ns.exemption_certifier or "")
    if ns.training_flops is None and not ns.benchmark_equivalence:
        raise InvalidInput("give --training-flops N and/or --benchmark-equivalence BASIS")
    client = connect(ns)
    m = model_json(register_model(client, ns.name, owner=ns.owner or "",
                                  training_flops=_parse_flops(ns.training_flops or "0"),
                                  benchmark_equivalence=ns.benchmark_equivalence or "", exemption=ex, drill=ns.drill))
    out.emit(m, f"registered model {m['name']} (covered: {'yes' if m['covered'] else 'no'}, "
                f"key {m['transit_key']})")
    return 0


def _model_text(m: dict[str, Any]) -> str:
    lines = [
        f"name:        {m['name']}",
        f"owner:       {m['owner']}",
        f"state:       {m['state']}",
        f"covered:     {'yes' if m['covered'] else 'no'}",
        f"training:    {m['training_flops']:.3g} FLOP",
    ]
    if m["benchmark_equivalence"]:
        lines.append(f"equivalence: {m['benchmark_equivalence']}")
    if m["exemption"]:
        e = m["exemption"]
        lines.append(f"exemption:   {e['basis']} (certified {e['date']} by {e['certifier']})")
    lines += [f"transit key: {m['transit_key']}", f"created:     {m['created_at']} by {m['created_by']}"]
    if m["drill"]:
        lines.append("drill model: yes")
    if m["artifacts"]:
        lines.append("artifacts:")
        lines += [f"  {a}" for a in m["artifacts"]]
    return "\n".join(lines)


def cmd_model_show(ns: argparse.Namespace, out: Out) -> int:
    m = model_json(get_model(connect(ns), ns.name))
    out.emit(m, lambda: _model_text(m))
    return 0


def cmd_model_list(ns: argparse.Namespace, out: Out) -> int:
    models = [model_json(m) for m in list_models(connect(ns))]
    out.emit(models, lambda: table(
        [[m["name"], m["state"], "yes" if m["covered"] else "no", f"{m['training_flops']:.3g}",
          m["owner"]] for m in models],
        ["NAME", "STATE", "COVERED", "FLOP", "OWNER"]))
    return 0


def cmd_model_policy(ns: argparse.Namespace, out: Out) -> int:
    m = set_custody_policy(connect(ns), ns.name, hosts=ns.host or [], paths=ns.path or [])
    data = model_json(m)
    data["custody_hosts"], data["custody_paths"] = list(m.custody_hosts), list(m.custody_paths)
    out.emit(data, f"custody policy of {ns.name}: hosts {data['custody_hosts'] or '(none)'}, "
                   f"paths {data['custody_paths'] or '(any on those hosts)'}")
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("model", help="models and their covered status").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    mr = m.add_parser("register", parents=[common], help="register a model")
    mr.add_argument("name", help="the model's name (lowercase letters, digits, - and .)")
    mr.add_argument("--training-flops", help="declared training compute, e.g. 3.1e26")
    mr.add_argument("--benchmark-equivalence", help="declared benchmark-equivalence basis")
    mr.add_argument("--owner", help="owner (default: your principal)")
    mr.add_argument("--exemption-basis", help="why a model over the threshold is not covered (recorded and audited)")
    mr.add_argument("--exemption-date", help="YYYY-MM-DD")
    mr.add_argument("--exemption-certifier", help="who certified the exemption")
    mr.add_argument("--drill", action="store_true",
                    help="a shutdown-drill model: executives may then declare it in the drill register")
    mr.set_defaults(fn=cmd_model_register)
    ml = m.add_parser("list", parents=[common], help="list models")
    ml.set_defaults(fn=cmd_model_list)
    ms = m.add_parser("show", parents=[common], help="show a model")
    ms.add_argument("name", help="a registered model")
    ms.set_defaults(fn=cmd_model_show)

    mp = m.add_parser("policy", parents=[common], help="where copies of a model may live (custody policy)")
    mp.add_argument("name", help="a registered model")
    mp.add_argument("--host", action="append", help="host-name pattern (fnmatch), repeatable")
    mp.add_argument("--path", action="append", help="path pattern (fnmatch), repeatable")
    mp.set_defaults(fn=cmd_model_policy)

"""The registry, client side: models and their custody policy, artifacts and their parents, lineage, copies.

Each function makes its call through :meth:`Client.call` and returns the
protobuf message; each raises the CustosError for the status the server
returned (NotFound for an unknown model or artifact, InvalidInput, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from custos.client.session import Client
from custos.client.wire import RELATION_TO_PB, RELATIONS
from custos.core.manifest import Manifest
from custos.errors import InvalidInput, NotFound
from custos.v1 import registry_pb2

ARTIFACT_REF = re.compile(r"[0-9a-f]{8,64}")
"""What may be an artifact id or a prefix of one (else a lineage subject is a model name)."""

# -- models ---------------------------------------------------------------------


def register_model(client: Client, name: str, *, owner: str = "", training_flops: float = 0.0,
                   benchmark_equivalence: str = "", exemption: registry_pb2.LimitedDutyExemption | None = None,
                   drill: bool = False) -> registry_pb2.Model:
    """Register a model; the server decides whether it is covered."""
    req = registry_pb2.RegisterModelRequest(name=name, owner=owner, training_flops=training_flops,
                                            benchmark_equivalence=benchmark_equivalence, exemption=exemption,
                                            drill=drill)
    return client.call(client.registry.RegisterModel, req, registry_pb2.RegisterModelResponse).model


def get_model(client: Client, name: str) -> registry_pb2.Model:
    return client.call(client.registry.GetModel, registry_pb2.GetModelRequest(name=name),
                       registry_pb2.GetModelResponse).model


def list_models(client: Client) -> list[registry_pb2.Model]:
    """Every registered model."""
    return list(client.call(client.registry.ListModels, registry_pb2.ListModelsRequest(),
                            registry_pb2.ListModelsResponse).models)


def list_artifacts(client: Client, model: str) -> list[registry_pb2.Artifact]:
    """Every artifact of ``model``, oldest first. Raises NotFound (the model)."""
    return list(client.call(client.registry.ListArtifacts, registry_pb2.ListArtifactsRequest(model=model),
                            registry_pb2.ListArtifactsResponse).artifacts)


def set_custody_policy(client: Client, model: str, *, hosts: Sequence[str] = (),
                       paths: Sequence[str] = ()) -> registry_pb2.Model:
    """Where copies of ``model`` may live: host-name and path patterns (fnmatch)."""
    req = registry_pb2.SetCustodyPolicyRequest(model=model, hosts=list(hosts), paths=list(paths))
    return client.call(client.registry.SetCustodyPolicy, req, registry_pb2.SetCustodyPolicyResponse).model


# -- artifacts ------------------------------------------------------------------


def get_artifact(client: Client, ref: str) -> registry_pb2.Artifact:
    """The artifact with id (or unambiguous id prefix) ``ref``."""
    return client.call(client.registry.GetArtifact, registry_pb2.GetArtifactRequest(id=ref),
                       registry_pb2.GetArtifactResponse).artifact


def resolve_parents(client: Client, parents: Sequence[tuple[str, str]]) -> list[registry_pb2.ParentRef]:
    """(id or prefix, relation) pairs as parent references with full ids, so that a typo fails
    before anything is hashed. Raises InvalidInput for an unknown relation, NotFound."""
    refs = []
    for ref, relation in parents:
        if relation not in RELATION_TO_PB:
            raise InvalidInput(f"unknown relation {relation!r}; want one of {', '.join(RELATIONS)}")
        refs.append(registry_pb2.ParentRef(artifact_id=get_artifact(client, ref).id,
                                           relation=RELATION_TO_PB[relation]))
    return refs


def register_artifact(client: Client, model: str, manifest: Manifest, *,
                      parents: Sequence[registry_pb2.ParentRef] = (), source_host: str = "",
                      source_path: str = "") -> registry_pb2.RegisterArtifactResponse:
    """Register ``manifest`` as an artifact of ``model`` (``created`` is false if it already was);
    ``source_host`` and ``source_path``, when given, record where its plaintext lies."""
    req = registry_pb2.RegisterArtifactRequest(model=model, manifest=manifest.encode(), parents=list(parents),
                                               source_host=source_host, source_path=source_path)
    return client.call(client.registry.RegisterArtifact, req, registry_pb2.RegisterArtifactResponse)


def register_stored(client: Client, artifact_id: str) -> registry_pb2.Artifact:
    """Mark an artifact stored; the server checks every object is there first."""
    req = registry_pb2.RegisterStoredArtifactRequest(artifact_id=artifact_id)
    return client.call(client.registry.RegisterStoredArtifact, req,
                       registry_pb2.RegisterStoredArtifactResponse).artifact


# -- lineage and copies ---------------------------------------------------------


def lineage(client: Client, subject: str,
            direction: registry_pb2.LineageDirection = registry_pb2.LINEAGE_DIRECTION_BOTH,
            ) -> registry_pb2.GetLineageResponse:
    """Ancestors and/or descendants of ``subject``: an artifact id (or prefix) if it looks like
    one and names one, else a model."""
    if ARTIFACT_REF.fullmatch(subject):
        try:
            return client.call(client.registry.GetLineage,
                               registry_pb2.GetLineageRequest(artifact_id=subject, direction=direction),
                               registry_pb2.GetLineageResponse)
        except NotFound:
            pass  # not an artifact: try the name as a model's
    return client.call(client.registry.GetLineage, registry_pb2.GetLineageRequest(model=subject, direction=direction),
                       registry_pb2.GetLineageResponse)


def list_copies(client: Client, model: str, *, exclude_derivatives: bool = False) -> registry_pb2.ListCopiesResponse:
    """Every known copy of ``model`` (and, unless excluded, of its derivatives)."""
    req = registry_pb2.ListCopiesRequest(model=model, exclude_derivatives=exclude_derivatives)
    return client.call(client.registry.ListCopies, req, registry_pb2.ListCopiesResponse)


def record_copy(client: Client, artifact_id: str, *, host: str, path: str,
                form: registry_pb2.CopyForm) -> registry_pb2.Copy:
    """Record a copy of an artifact at ``path`` on ``host``."""
    req = registry_pb2.RecordCopyRequest(artifact_id=artifact_id, host=host, path=path, form=form)
    return client.call(client.registry.RecordCopy, req, registry_pb2.RecordCopyResponse).copy

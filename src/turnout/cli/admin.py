"""`turnout admin`: operator commands that work on the store directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from turnout.api.schemas.admin import EndpointCreate, KeyLimitUpdate, OrgLimitUpdate
from turnout.api.services.admin import AdminService
from turnout.cli.context import DataDir, JsonFlag, dump, emit, load_settings, run_or_exit
from turnout.placement.engines import EngineCatalog
from turnout.store.db import Database

app = typer.Typer(help="Operator commands on the store: orgs, keys, architectures, endpoints.")
org_app = typer.Typer(help="Orgs (tenants).")
key_app = typer.Typer(help="Management and inference keys.")
arch_app = typer.Typer(help="The architecture catalog and grants.")
endpoint_app = typer.Typer(help="Endpoints.")
app.add_typer(org_app, name="org")
app.add_typer(key_app, name="key")
app.add_typer(arch_app, name="arch")
app.add_typer(endpoint_app, name="endpoint")
replica_app = typer.Typer(help="Replicas: where each engine process runs.")
app.add_typer(replica_app, name="replica")
deployment_app = typer.Typer(help="Deployments as the operator sees them.")
app.add_typer(deployment_app, name="deployment")

T = TypeVar("T")


def _with_admin(data_dir: DataDir, action: Callable[[AdminService], Awaitable[T]]) -> T:
    settings = load_settings(data_dir)

    async def work() -> T:
        db = Database(settings.resolved_database_url())
        try:
            await db.migrate()
            service = AdminService(db, EngineCatalog.from_file(settings.engine_templates))
            await service.seed()
            return await action(service)
        finally:
            await db.dispose()

    return run_or_exit(work)


@org_app.command("create")
def org_create(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Create an org; it is granted the built-in architectures."""
    org = _with_admin(data_dir, lambda s: s.create_org(name))
    emit(org, as_json, ["name", "created", "architectures"])


@org_app.command("limit")
def org_limit(
    org: str,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            "--max-concurrent",
            min=0,
            help="Requests in flight over all the org's endpoints, per gateway (0: no limit).",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Cap an org's requests in flight; left out: unchanged. Gateways apply it within seconds."""
    fields = {} if max_concurrent is None else {"max_concurrent": max_concurrent or None}
    update = OrgLimitUpdate(**fields)
    out = _with_admin(data_dir, lambda s: s.limit_org(org, update))
    emit(out, as_json, ["name", "max_concurrent"])


@org_app.command("list")
def org_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    emit(
        _with_admin(data_dir, lambda s: s.list_orgs()),
        as_json,
        ["name", "created", "architectures"],
        "orgs",
    )


@org_app.command("s3-allow")
def org_s3_allow(
    org: str,
    uri: Annotated[str, typer.Argument(help="s3://bucket/prefix (s3://bucket for all of it)")],
    profile: Annotated[
        str | None, typer.Option("--profile", help="AWS profile of this server to read it with")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Let ORG sync weights from an S3 bucket/prefix (nothing else of S3 is allowed to it)."""
    out = _with_admin(data_dir, lambda s: s.allow_source(org, uri, profile))
    emit(out, as_json, _SOURCE_COLUMNS)


@org_app.command("file-allow")
def org_file_allow(
    org: str, directory: str, data_dir: DataDir = None, as_json: JsonFlag = False
) -> None:
    """Let ORG sync weights from a directory of this server (and what is under it)."""
    emit(_with_admin(data_dir, lambda s: s.allow_source(org, directory, None)), as_json,
         _SOURCE_COLUMNS)  # fmt: skip


@org_app.command("hf-allow")
def org_hf_allow(
    org: str,
    uri: Annotated[str, typer.Argument(help="hf://namespace or hf://namespace/repo")],
    token_env: Annotated[
        str | None,
        typer.Option("--token-env", help="Server env variable holding ORG's Hugging Face token"),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Let ORG sync from a Hugging Face namespace or repo, with its own token (or none)."""
    out = _with_admin(data_dir, lambda s: s.allow_source(org, uri, token_env))
    emit(out, as_json, _SOURCE_COLUMNS)


@org_app.command("sources")
def org_sources(org: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """The weight sources ORG may sync from (besides the server-wide TURNOUT_ALLOWED_*)."""
    out = _with_admin(data_dir, lambda s: s.list_sources(org))
    emit(out, as_json, _SOURCE_COLUMNS, "sources")


@org_app.command("source-remove")
def org_source_remove(
    org: str, uri: str, data_dir: DataDir = None, as_json: JsonFlag = False
) -> None:
    """Withdraw a weight source from ORG (syncs not yet done from it then fail)."""
    out = _with_admin(data_dir, lambda s: s.remove_source(org, uri))
    emit(out, as_json, _SOURCE_COLUMNS, "sources")


_SOURCE_COLUMNS = ["org", "scheme", "uri", "credentials"]


@deployment_app.command("show")
def deployment_show(
    deployment_id: str, data_dir: DataDir = None, as_json: JsonFlag = False
) -> None:
    """A deployment's full error and events (engine log lines included; tenants see them
    redacted)."""
    out = _with_admin(data_dir, lambda s: s.deployment(deployment_id))
    if as_json:
        emit(out, True, [])
        return
    emit(out, False, ["deployment_id", "endpoint_id", "org", "version_id", "state", "step",
                      "error_code"])  # fmt: skip
    if out.error_message:
        typer.echo(out.error_message)
    for line in out.events:
        typer.echo(line)


@key_app.command("create")
def key_create(
    org: Annotated[str, typer.Option("--org", help="Org the key acts for.")],
    kind: Annotated[str, typer.Option("--kind", help="management or inference")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a key. Prints only the key on stdout: it is shown this once, and stored hashed."""
    key = _with_admin(data_dir, lambda s: s.create_key(org, kind))
    if as_json:
        emit(key, True, [])
    else:
        typer.echo(key.key)


@key_app.command("list")
def key_list(
    org: Annotated[str | None, typer.Option("--org")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    keys = _with_admin(data_dir, lambda s: s.list_keys(org))
    emit(keys, as_json, ["id", "org", "kind", "prefix", "created", "revoked", "rpm", "tpm"], "keys")


@key_app.command("limit")
def key_limit(
    key_id: str,
    rpm: Annotated[
        int | None,
        typer.Option("--rpm", min=0, help="Requests per minute, per gateway (0: no limit)."),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(
            "--tpm", min=0, help="Tokens (prompt + completion) per minute, per gateway (0: none)."
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Set an inference key's limits; a limit left out is unchanged. Over it: 429."""
    fields: dict[str, int | None] = {}
    if rpm is not None:
        fields["rpm"] = rpm or None
    if tpm is not None:
        fields["tpm"] = tpm or None
    update = KeyLimitUpdate(**fields)
    out = _with_admin(data_dir, lambda s: s.limit_key(key_id, update))
    emit(out, as_json, ["id", "org", "kind", "rpm", "tpm"])


@key_app.command("revoke")
def key_revoke(key_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    emit(
        _with_admin(data_dir, lambda s: s.revoke_key(key_id)),
        as_json,
        ["id", "org", "kind", "revoked"],
    )


@arch_app.command("list")
def arch_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    archs = _with_admin(data_dir, lambda s: s.list_architectures())
    emit(archs, as_json, ["arch_id", "description"], "architectures")


@arch_app.command("grant")
def arch_grant(
    arch: str,
    org: Annotated[str, typer.Option("--org")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    emit(_with_admin(data_dir, lambda s: s.grant(arch, org)), as_json, ["name", "architectures"])


@endpoint_app.command("create")
def endpoint_create(
    endpoint_id: str,
    org: Annotated[str, typer.Option("--org")],
    arch: Annotated[str, typer.Option("--arch")],
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=64)] = 1,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="builtin, vllm, sglang or a configured template"),
    ] = None,
    gpus_per_replica: Annotated[
        int | None,
        typer.Option(
            "--gpus-per-replica", min=0, max=64, help="default: the architecture's (its TP size)"
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    req = EndpointCreate(
        endpoint_id=endpoint_id,
        org=org,
        arch=arch,
        replicas=replicas,
        engine=engine,
        gpus_per_replica=gpus_per_replica,
    )
    out = _with_admin(data_dir, lambda s: s.create_endpoint(req))
    emit(out, as_json, ["endpoint_id", "org", "arch", "replicas", "engine", "gpus_per_replica"])


@endpoint_app.command("list")
def endpoint_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    out = _with_admin(data_dir, lambda s: s.list_endpoints())
    emit(
        out,
        as_json,
        ["endpoint_id", "org", "arch", "replicas", "engine", "gpus_per_replica", "replica_problem"],
        "endpoints",
    )


@endpoint_app.command("delete")
def endpoint_delete(endpoint_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    emit(
        _with_admin(data_dir, lambda s: s.delete_endpoint(endpoint_id)),
        as_json,
        ["endpoint_id", "org"],
    )


@replica_app.command("list")
def replica_list(
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Only this endpoint's.")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Every replica: its endpoint, deployment, version, node, address, GPUs and state."""
    out = _with_admin(data_dir, lambda s: s.list_replicas(endpoint))
    columns = [
        "replica_id", "endpoint_id", "deployment_id", "version_id", "node", "address", "gpus",
        "state",
    ]  # fmt: skip
    if as_json:  # exactly these keys, for scripts
        dump({"replicas": [{c: r[c] for c in columns} for r in out.model_dump()["replicas"]]})
        return
    emit(out, as_json, [*columns, "detail"], "replicas")

"""The ``imgstream`` command line of the worker package: worker, init, upload, predictions, replay,
models list / publish. Packages that declare an ``imgstream.commands`` entry point add theirs: in
a checkout (installed with the ``train`` and ``bench`` extras) the tooling's stack, models
export / train / evaluate, bench, soak, table-state and docs (tools/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app.core.errors import ImgstreamError
from app.ops.cli_support import _bundle_path, _progress, _publish, _task_factory, console
from app.core.settings import get_settings
from models.domain import CLASSIFIERS

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@cli.command("init")
def init(wait: float = typer.Option(0.0, help="seconds to keep retrying while a service does not answer yet "
                                          "(a container started beside the services)")) -> None:
    """Create topics, bucket and schema on already-running services (Docker hosts, managed services)."""
    import asyncio
    import time

    import asyncpg

    from app.stream import broker
    from app.core.security import postgres_ssl
    from app.storage.database import migrate
    from app.storage.objectstore import ObjectStore

    settings = get_settings()

    async def go() -> None:
        for topic, state in (await broker.ensure_topics(settings)).items():
            console.print(f"topic {topic}: {state}")
        async with ObjectStore(settings) as store:
            await store.ensure_bucket()
        console.print(f"bucket {settings.s3_bucket}: ready")
        conn = await asyncpg.connect(settings.postgres_dsn.get_secret_value(), ssl=postgres_ssl(settings))
        try:
            console.print(f"migrations applied: {await migrate(conn) or 'none needed'}")
        finally:
            await conn.close()

    deadline = time.monotonic() + wait
    while True:
        try:
            asyncio.run(go())
            return
        except Exception as exc:  # noqa: BLE001 - not up yet: say which and why, then try again
            if time.monotonic() >= deadline:
                raise
            from app.core.security import describe

            message = exc.message if isinstance(exc, ImgstreamError) else describe(exc)
            console.print(f"init: not ready ({message}); retrying")
            time.sleep(2)


models_cli = typer.Typer(no_args_is_help=True, help="Export, train, evaluate and publish model bundles.")
cli.add_typer(models_cli, name="models")


@models_cli.command("publish")
def models_publish(path: Path) -> None:
    """Publish a local bundle folder to the object store."""
    _publish(path)


@models_cli.command("list")
def models_list() -> None:
    """Published bundle versions with their held-out metrics."""
    import asyncio

    from app.bundles import registry
    from app.storage.objectstore import ObjectStore

    async def go():
        settings = get_settings()
        async with ObjectStore(settings) as store:
            return await registry.versions(store), await registry.deployment(store, settings.app_id)

    manifests, record = asyncio.run(go())
    table = Table("version", "role", "backbone", "k", "reduction", "images", *CLASSIFIERS, "ceiling",
                  "descriptor space")
    table.columns[0].no_wrap = True
    for m in manifests:
        c = m["classifiers"]
        role = ("serving" if record and m["version"] == record.serving
                else "shadow" if record and m["version"] in record.shadows else "")
        table.add_row(m["version"], role, m["backbone"], str(m["k"]), m["reduction"], str(m["data"]["images"]),
                      *(f"{c[n]['top1']:.3f}" for n in CLASSIFIERS), f"{m['ceiling']['top1']:.3f}",
                      m.get("descriptor_space") or "-")
    console.print(table)
    if record is None:
        console.print("no deployment record yet: workers serve IMGSTREAM_BUNDLE_VERSION ('latest' = newest "
                      "published at their start) with IMGSTREAM_SHADOW_BUNDLES as shadows")


def _deployment(**change):
    import asyncio

    from app.bundles import registry
    from app.storage.objectstore import ObjectStore

    async def go():
        settings = get_settings()
        async with ObjectStore(settings) as store:
            return await registry.set_deployment(store, settings.app_id, **change)

    try:
        record = asyncio.run(go())
    except ImgstreamError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from None
    console.print(f"serving: [bold]{record.serving}[/]; shadows: {', '.join(record.shadows) or 'none'} "
                  f"(workers of {get_settings().app_id} follow within IMGSTREAM_REGISTRY_POLL_S)")


@models_cli.command("promote")
def models_promote(version: str = typer.Argument(..., help="a published version, or 'latest'")) -> None:
    """Make a bundle the serving one: running workers switch to it without a restart (images
    already answered keep their answer; a shadow promoted stops being a shadow)."""
    _deployment(serving=version)


@models_cli.command("shadow")
def models_shadow(versions: list[str] = typer.Argument(None, help="published versions (none: no shadows)")) -> None:
    """Set the shadow bundles: run beside the serving one on the live stream, their predictions
    stored tagged with their version and never served."""
    _deployment(shadows=list(versions or []))


@cli.command("worker")
def worker(
    role: list[str] = typer.Option(None, "--role", "-r", help="stage(s) to run (repeatable); default: all"),
    web_port: int = typer.Option(None, help="HTTP port of this worker (default IMGSTREAM_WEB_PORT)"),
    loglevel: str = typer.Option("info", "--loglevel", "-l"),
) -> None:
    """Run a Faust worker: the agents of the given roles plus the HTTP views."""
    import os
    import sys

    from app.core.settings import parse_roles

    if role:
        os.environ["IMGSTREAM_ROLES"] = ",".join(parse_roles(role))
    if web_port:
        os.environ["IMGSTREAM_WEB_PORT"] = str(web_port)
    get_settings.cache_clear()
    settings = get_settings()
    if "extractor" in settings.roles:  # refuse a missing GPU provider now, not after the first rebalance
        from models.extractor import check_providers

        check_providers(settings.onnx_providers)
    if settings.event_loop == "uvloop":  # before any loop exists: Faust and mode take the policy
        import mode.loop

        mode.loop.use("uvloop")
    import asyncio

    from app.ops.gate import wait_for_kafka
    from app.core.logs import configure_logging

    configure_logging(settings)
    asyncio.run(wait_for_kafka(settings))
    from app.worker import get_app

    sys.argv = ["imgstream", "worker", "--loglevel", loglevel, "--web-port", str(settings.web_port),
                "--web-host", settings.web_host]
    get_app().main()


@cli.command("upload")
def upload(
    paths: list[Path] = typer.Argument(..., help="image files or folders"),
    url: str = typer.Option(None, help="worker URL (default http://IMGSTREAM_WEB_HOST:IMGSTREAM_WEB_PORT)"),
    concurrency: int = typer.Option(8, help="uploads in flight"),
) -> None:
    """Upload images concurrently with a progress bar; prints one image id per file."""
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    _upload_files(url, files, concurrency, "upload")


def _upload_files(url: str | None, files: list[Path], concurrency: int, title: str,
                  labels: list[str] | None = None) -> None:
    """Upload (and with ``labels`` label) ``files`` with a progress bar; prints image id (label)
    and file per accepted image, exits 1 if any was refused."""
    import asyncio

    from app.http.client import upload_many

    settings = get_settings()
    base = url or f"http://{settings.web_host}:{settings.web_port}"
    with _progress() as progress:
        advance = _task_factory(progress, title)(len(files))
        results = asyncio.run(upload_many(base, files, concurrency, advance, _client_token(settings, "write"),
                                          labels))
    failed = 0
    for (path, status, body), label in zip(results, labels or [None] * len(files), strict=True):
        if status == 202:
            print("\t".join([body["image_id"], *([label] if label else []), str(path)]))
        else:
            failed += 1
            Console(stderr=True).print(f"[red]{path}[/]: {status} {body.get('error', body)}")
    raise typer.Exit(1 if failed else 0)


@cli.command("feedback")
def feedback(
    folder: Path = typer.Argument(..., help="a labelled folder: <folder>/<label>/<image>"),
    url: str = typer.Option(None, help="worker URL (default http://IMGSTREAM_WEB_HOST:IMGSTREAM_WEB_PORT)"),
    concurrency: int = typer.Option(8, help="uploads in flight"),
) -> None:
    """Upload a labelled folder and send each image's label (POST /feedback): the live accuracy of
    the serving bundle and its shadows. Prints image id, label and file per image."""
    if not folder.is_dir():
        console.print(f"[red]{folder} is not a folder[/]")
        raise typer.Exit(2)
    files = [(p, d.name) for d in sorted(folder.iterdir()) if d.is_dir() for p in sorted(d.rglob("*")) if p.is_file()]
    if not files:
        console.print(f"[red]no images under {folder}/<label>/[/]")
        raise typer.Exit(2)
    _upload_files(url, [p for p, _ in files], concurrency, "upload + label", [label for _, label in files])


def _client_token(settings, scope: str) -> str | None:
    """The token the CLI's client sends: the first write token (it also reads), else for reads the
    first read token."""
    tokens = settings.api_write_tokens or (settings.api_read_tokens if scope == "read" else ())
    return tokens[0].get_secret_value() if tokens else None


@cli.command("predictions")
def predictions(
    image_id: str,
    url: str = typer.Option(None),
    trace: bool = typer.Option(False, help="include the image's timeline"),
) -> None:
    """Print an image's status, three predictions and consensus as JSON."""
    import asyncio
    import json

    import aiohttp

    base = url or f"http://{get_settings().web_host}:{get_settings().web_port}"
    token = _client_token(get_settings(), "read")

    async def go():
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(headers=headers) as s, \
                s.get(f"{base}/predictions/{image_id}", params={"trace": "1"} if trace else None) as r:
            return r.status, await r.json()

    status, body = asyncio.run(go())
    print(json.dumps(body, indent=2))
    raise typer.Exit(0 if status == 200 else 1)


@cli.command("replay")
def replay(
    model_version: str = typer.Option(..., help="bundle version to re-classify with (same descriptor space)"),
    classifier: list[str] = typer.Option(None, help="classifiers to run (default: all three)"),
) -> None:
    """Re-classify the history of image-features-stream with another bundle: new rows tagged with
    its version, no re-extraction, old rows untouched, under its own consumer group."""
    import asyncio

    from app.ops import replay as replaying

    with _progress() as progress:
        result = asyncio.run(replaying.replay(get_settings(), model_version, classifier or None,
                                              _task_factory(progress, "replay"), log=console.print))
    console.print_json(data=result)


def _add_plugins() -> None:
    """Commands of the packages installed beside the worker's, by entry point: the worker never
    imports the tooling, and the worker image (which installs the project without tools/) simply
    has none of its commands."""
    from importlib.metadata import entry_points

    for plugin in entry_points(group="imgstream.commands"):
        try:
            register = plugin.load()
        except ModuleNotFoundError as exc:
            if exc.name != plugin.module.split(".")[0]:
                raise
            continue  # declared by the project's metadata, but its package is not installed here
        register(cli, models_cli)


_add_plugins()


def main() -> None:
    try:
        cli()
    except ImgstreamError as exc:
        # one line whatever the terminal's width, the message printed as written (not as markup)
        Console(stderr=True, soft_wrap=True).print(f"[red]error[/]: {escape(exc.message)}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

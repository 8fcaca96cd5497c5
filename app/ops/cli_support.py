"""What the command lines of the worker (app/ops/cli.py) and of the tooling (tools/cli.py) share: the
console, progress bars, and finding or publishing a bundle."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from app.core.settings import get_settings

console = Console(width=None if Console().is_terminal else 160)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    "{task.fields[rate]}", TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def _task_factory(progress, description: str):
    import time

    def make(total: int):
        task = progress.add_task(description, total=total, rate="")
        started = time.monotonic()

        def advance(n: int) -> None:
            progress.advance(task, n)
            done = progress.tasks[task].completed
            progress.update(task, rate=f"{done / max(time.monotonic() - started, 1e-9):.0f} img/s")

        return advance

    return make


def _publish(path: Path) -> None:
    import asyncio

    from app.bundles import registry
    from app.storage.objectstore import ObjectStore

    async def go() -> str:
        async with ObjectStore(get_settings()) as store:
            await store.ensure_bucket()
            return await registry.publish(store, path)

    console.print(f"published {asyncio.run(go())} to s3://{get_settings().s3_bucket}/{registry.PREFIX}")


def _bundle_path(version: str) -> Path:
    import asyncio

    from app.bundles import registry
    from app.storage.objectstore import ObjectStore

    local = get_settings().bundles_dir / version
    if version != "latest" and (local / "manifest.json").exists():
        return local

    async def go() -> Path:
        async with ObjectStore(get_settings()) as store:
            return await registry.fetch(store, version, get_settings().bundles_dir)

    return asyncio.run(go())

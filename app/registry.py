"""Model bundles in the object store: ``models/<version>/<file>``, the manifest written last so a
half-published bundle is never listed. Workers fetch a version (or the latest) into a local cache."""

from __future__ import annotations

import json
from pathlib import Path

from app.errors import ModelError, NotFound
from app.storage.objectstore import ObjectStore
from models.bundle import FILES

PREFIX = "models/"


async def publish(store: ObjectStore, bundle_dir: Path) -> str:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    version = manifest["version"]
    for name in FILES:
        if name != "manifest.json":
            await store.put(f"{PREFIX}{version}/{name}", (bundle_dir / name).read_bytes())
    await store.put(f"{PREFIX}{version}/manifest.json", (bundle_dir / "manifest.json").read_bytes(),
                    "application/json")
    return version


async def versions(store: ObjectStore) -> list[dict]:
    """Manifests of every published bundle, oldest first."""
    keys = [k for k in await store.list_keys(PREFIX) if k.endswith("/manifest.json")]
    manifests = [json.loads(await store.get(k)) for k in keys]
    return sorted(manifests, key=lambda m: m["version"])


async def resolve(store: ObjectStore, version: str) -> str:
    if version != "latest":
        return version
    published = await versions(store)
    if not published:
        raise ModelError("no model bundle is published: run `imgstream models train`")
    return published[-1]["version"]


async def fetch(store: ObjectStore, version: str, cache: Path) -> Path:
    """Download bundle ``version`` (or 'latest') into ``cache/<version>`` unless already there."""
    version = await resolve(store, version)
    dest = cache / version
    if all((dest / f).exists() for f in FILES):
        return dest
    tmp = cache / f".{version}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        try:
            (tmp / name).write_bytes(await store.get(f"{PREFIX}{version}/{name}"))
        except NotFound as exc:
            raise ModelError(f"bundle {version} is not published (missing {name})") from exc
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest

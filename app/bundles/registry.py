"""Model bundles in the object store: ``models/<version>/<file>``, the manifest written last so a
half-published bundle is never listed. Workers fetch a version (or the latest) into a local cache.

``models/deployments/<app id>.json`` says which bundle a deployment serves and which run beside it
as shadows (``imgstream models promote`` / ``shadow``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec

from app.core.errors import ModelError, NotFound
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


class Deployment(msgspec.Struct, frozen=True):
    """Which bundles a deployment runs, kept in the object store beside the bundles: the serving
    one and its shadows. Workers read it at start and follow its changes without a restart."""

    serving: str | None = None
    shadows: list[str] = []
    updated_at: float = 0.0


def _deployment_key(app_id: str) -> str:
    return f"{PREFIX}deployments/{app_id}.json"


async def deployment(store: ObjectStore, app_id: str) -> Deployment | None:
    """The deployment's record, or None where none was ever written."""
    try:
        raw = await store.get(_deployment_key(app_id))
    except NotFound:
        return None
    try:
        return msgspec.json.decode(raw, type=Deployment)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"deployment record {_deployment_key(app_id)} is malformed: {exc}") from exc


async def set_deployment(store: ObjectStore, app_id: str, *, serving: str | None = None,
                         shadows: list[str] | None = None) -> Deployment:
    """Change the serving bundle and/or the shadows (None: keep as is). Every named version must be
    published; the serving bundle is never its own shadow."""
    current = await deployment(store, app_id) or Deployment()
    published = {m["version"] for m in await versions(store)}
    serving = await resolve(store, serving) if serving else current.serving
    shadows = list(current.shadows if shadows is None else shadows)
    unknown = sorted({v for v in [serving, *shadows] if v} - published)
    if unknown:
        raise NotFound(f"not published: {', '.join(unknown)}", code="bundle_not_found")
    shadows = [v for v in dict.fromkeys(shadows) if v != serving]
    record = Deployment(serving, shadows, time.time())
    await store.put(_deployment_key(app_id), msgspec.json.encode(record), "application/json")
    return record

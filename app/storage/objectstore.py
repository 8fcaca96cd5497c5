"""S3 object store through aioboto3: raw images under ``raw-images/`` and bundles under ``models/``.

One ``ObjectStore`` holds one aiobotocore client for its lifetime (``start``/``stop``); it is never
created at import time. Any S3 works (versitygw, MinIO, SeaweedFS, AWS) by ``IMGSTREAM_S3_ENDPOINT``.

With ``IMGSTREAM_S3_DATA_CLIENT=obstore`` the per-image calls (put and get of raw images) go
through obstore (Rust's object_store: request signing and I/O on its own threads, off the event
loop) and aioboto3 keeps everything else (buckets, listings, bundles, health). obstore's puts sign
their body only where nothing else guards it in transit (``signs_payload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from urllib.parse import urlsplit

import aioboto3
import obstore
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from app.core.errors import NotFound, ServiceUnavailable
from app.core.metrics import DELETE_FAILED
from app.core.security import describe
from app.core.settings import Settings
from app.storage import exit_guard

log = logging.getLogger("imgstream.objectstore")

_S3_DOWN = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._stack: contextlib.AsyncExitStack | None = None
        self._client = None
        self._data = None  # obstore's S3Store when settings.s3_data_client == "obstore"

    async def start(self) -> None:
        session = aioboto3.Session()
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self.settings.s3_endpoint,
                region_name=self.settings.s3_region,
                # certificates are always verified: against the private CA when one is set
                verify=str(self.settings.s3_ca_file) if self.settings.s3_ca_file else True,
                aws_access_key_id=self.settings.s3_access_key.get_secret_value(),
                aws_secret_access_key=self.settings.s3_secret_key.get_secret_value(),
                config=Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=3,
                    read_timeout=10,
                    retries={"max_attempts": 2, "mode": "standard"},
                    max_pool_connections=64,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        )

        if self.settings.s3_data_client == "obstore":
            self._data = _obstore(self.settings)

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = self._data = None

    async def __aenter__(self) -> ObjectStore:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def client(self):
        if self._client is None:
            raise RuntimeError("ObjectStore used before start()")
        return self._client

    async def ensure_bucket(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            await self.client.create_bucket(Bucket=self.bucket)

    async def ping(self) -> None:
        """Raise ServiceUnavailable unless the bucket answers."""
        try:
            await asyncio.wait_for(self.client.head_bucket(Bucket=self.bucket), 5)
        except _S3_DOWN as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc

    async def put(self, key: str, body: bytes, content_type: str = "application/octet-stream", **meta: str) -> None:
        if self._data is not None:
            return await self._put_fast(key, body, content_type, meta)
        try:
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=meta)
        except _S3_DOWN as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc

    async def get(self, key: str) -> bytes:
        if self._data is not None:
            return await self._get_fast(key)
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"object {key!r} not found") from exc
            raise ServiceUnavailable(f"object store error: {exc.response.get('Error', {}).get('Code')}") from exc
        except _S3_DOWN as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc

    async def delete(self, key: str) -> bool:
        """Delete ``key``; False (counted and logged, never raised) when it could not be: the caller
        is already answering an error, and an object left behind is harmless but must be visible."""
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=key)
            return True
        except _S3_DOWN as exc:
            reason = exc.response.get("Error", {}).get("Code", "ClientError") if isinstance(exc, ClientError) \
                else type(exc).__name__
            DELETE_FAILED.labels(reason).inc()
            log.warning("could not delete object %s (%s): it stays in the bucket", key, reason)
            return False

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except _S3_DOWN as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc
        return keys

    # --- obstore's data path ---------------------------------------------------------------------
    async def _put_fast(self, key: str, body: bytes, content_type: str, meta: dict[str, str]) -> None:
        try:
            await obstore.put_async(self._data, key, body, attributes={"Content-Type": content_type, **meta},
                                    use_multipart=False)
        except (ObstoreError, OSError, asyncio.TimeoutError) as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc

    async def _get_fast(self, key: str) -> bytes:
        try:
            resp = await obstore.get_async(self._data, key)
            return bytes(await resp.bytes_async())
        except FileNotFoundError as exc:
            raise NotFound(f"object {key!r} not found") from exc
        except (ObstoreError, OSError, asyncio.TimeoutError) as exc:
            raise ServiceUnavailable(f"object store unavailable: {describe(exc)}") from exc


def _obstore(settings: Settings) -> S3Store:
    exit_guard.install()  # its completions and interpreter exit: see the module
    return S3Store(
        settings.s3_bucket, endpoint=settings.s3_endpoint, region=settings.s3_region,
        access_key_id=settings.s3_access_key.get_secret_value(),
        secret_access_key=settings.s3_secret_key.get_secret_value(), virtual_hosted_style_request=False,
        unsigned_payload=not signs_payload(settings.s3_endpoint, settings.s3_payload_signing),
        client_options={"allow_http": settings.s3_endpoint.startswith("http://"), "connect_timeout": "3s",
                        "timeout": "10s",
                        **({"root_certificate": settings.s3_ca_file.read_bytes()} if settings.s3_ca_file else {})},
        retry_config={"max_retries": 1},
    )


def signs_payload(endpoint: str, mode: str) -> bool:
    """Whether a put signs its body (``IMGSTREAM_S3_PAYLOAD_SIGNING``): ``auto`` signs only over
    plain HTTP to a host that is not this one, where nothing else guards the body in transit."""
    if mode != "auto":
        return mode == "signed"
    url = urlsplit(endpoint)
    if url.scheme == "https":
        return False
    host = url.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: another machine as far as we can tell
        return True

"""Which model bundles a worker serves: the serving one and its shadows, as the settings and the
registry's deployment record name them, followed while the worker runs (a promotion needs no
restart), and the classifiers of older bundles for descriptors they produced."""

from __future__ import annotations

import asyncio
import logging

from app.bundles import registry
from app.core.backoff import Backoff
from app.core.errors import ModelError, NotFound, ServiceUnavailable
from app.core.metrics import BUNDLE, SHADOWS
from app.core.settings import Settings
from app.core.threads import Pool
from app.storage.objectstore import ObjectStore
from models.bundle import Bundle

log = logging.getLogger("imgstream.deployment")


class BundleDeployment:
    """The serving bundle, its shadows and the classifiers of other versions, for one worker.

    ``extractor``: whether this worker extracts (it then loads the backbone, and runs shadows)."""

    def __init__(self, settings: Settings, store: ObjectStore, predict_pool: Pool, extractor: bool) -> None:
        self.settings, self.store, self.predict_pool, self.extractor = settings, store, predict_pool, extractor
        self._bundle: Bundle | None = None
        self._loaded = asyncio.Event()
        self._other_bundles: dict[str, Bundle] = {}
        self._shadows: tuple[Bundle, ...] = ()
        # (serving, shadow versions) as last read from the settings and the registry
        self.deployed: tuple[str, tuple[str, ...]] | None = None
        self.error = "model bundle not loaded yet"
        self._task: asyncio.Task | None = None

    @property
    def onnx_classifiers(self) -> tuple[str, ...]:
        """The classifiers this worker serves as tree ensembles on onnxruntime: those it runs an
        agent for (building one costs memory and a second or so per bundle; other roles predict
        at most a /predict call, with LightGBM)."""
        return self.settings.onnx_classifiers(self.settings.classifiers)

    @property
    def bundle(self) -> Bundle:
        """The serving bundle; ``ModelError`` (503) until one is loaded."""
        if self._bundle is None:
            raise ModelError(self.error)
        return self._bundle

    @property
    def shadows(self) -> tuple[Bundle, ...]:
        """Shadow bundles this worker's extractor runs beside the serving one (same backbone)."""
        return self._shadows

    async def wait(self) -> Bundle:
        """The serving bundle, once there is one."""
        await self._loaded.wait()
        return self._bundle

    def serve(self, bundle: Bundle) -> None:
        """Serve ``bundle`` now (a batch in flight keeps the bundle it started with)."""
        self._bundle = bundle
        self._loaded.set()

    async def classifiers_for(self, version: str) -> Bundle:
        """The bundle whose reduction made descriptors of ``version``: the loaded one, or another
        published one fetched on demand (classifiers only). Descriptors are only ever classified by
        the classifiers trained on their own descriptor space."""
        bundle = self.bundle
        if version == bundle.version:
            return bundle
        if version not in self._other_bundles:
            path = await registry.fetch(self.store, version, self.settings.bundles_dir)
            self._other_bundles[version] = await self.predict_pool.run(
                lambda: Bundle.load(path, extractor=False, onnx_classifiers=self.onnx_classifiers))
            log.info("loaded classifiers of bundle %s for descriptors it produced", version)
        return self._other_bundles[version]

    async def _target(self) -> tuple[str, tuple[str, ...]]:
        """(serving version, shadow versions) this worker should run now: see
        ``Settings.bundle_version`` and ``Settings.shadow_bundles``. Publishing a bundle never
        changes what a running worker serves; promoting one does."""
        record = await registry.deployment(self.store, self.settings.app_id)
        serving = self.settings.bundle_version
        if serving == "latest":
            if record is not None and record.serving:
                serving = record.serving
            elif self._bundle is not None:
                serving = self._bundle.version
        serving = await registry.resolve(self.store, serving)
        shadows = tuple(record.shadows) if record is not None else self.settings.shadow_bundles
        return serving, tuple(v for v in shadows if v != serving)

    async def _load(self, version: str, extractor: bool) -> Bundle:
        path = await registry.fetch(self.store, version, self.settings.bundles_dir)
        # loaded on a thread named like the ONNX pool: the sessions' own intra-op threads inherit it
        loader = Pool(1, "onnx-load")
        try:
            return await loader.run(lambda: Bundle.load(path, extractor=extractor,
                                                        threads=self.settings.worker_ort_threads,
                                                        providers=list(self.settings.onnx_providers),
                                                        wide_threads=self.settings.worker_wide_threads,
                                                        onnx_classifiers=self.onnx_classifiers))
        finally:
            loader.shutdown(wait=False)

    async def apply(self, serving: str, shadows: tuple[str, ...]) -> None:
        """Load what changed and swap it in; a batch in flight keeps the bundles it started with."""
        if self._bundle is None or self._bundle.version != serving:
            bundle = await self._load(serving, self.extractor)
            previous = self._bundle
            self.serve(bundle)
            BUNDLE.labels(bundle.version, bundle.manifest["backbone"], str(bundle.k)).set(1)
            if previous is not None:
                BUNDLE.labels(previous.version, previous.manifest["backbone"], str(previous.k)).set(0)
                log.info("now serving bundle %s (was %s)", bundle.version, previous.version)
            else:
                log.info("loaded model bundle %s (%s, k=%d)", bundle.version, bundle.manifest["backbone"], bundle.k)
            log.info("classifiers of bundle %s: %s", bundle.version,
                     "; ".join(f"{name} on {c.runtime_note}" for name, c in bundle.classifiers.items()))
        wanted = shadows if self.extractor else ()
        if tuple(b.version for b in self._shadows) != wanted or any(
                b.backbone_id != self._bundle.backbone_id for b in self._shadows):
            loaded = {b.version: b for b in self._shadows}
            out = []
            for version in wanted:
                bundle = loaded.get(version) or await self._load(version, extractor=False)
                if bundle.backbone_id != self._bundle.backbone_id:
                    log.warning("shadow bundle %s uses another backbone (%s) than the serving one (%s): not run; "
                                "re-classify history with it instead (imgstream replay)", version,
                                bundle.manifest["backbone"], self._bundle.manifest["backbone"])
                    continue
                out.append(bundle)
            self._shadows = tuple(out)
            SHADOWS.set(len(out))
            log.info("shadow bundles: %s", ", ".join(b.version for b in out) or "none")

    async def follow(self) -> None:
        """Load the bundles the settings and the registry name, then follow the registry's record;
        keep retrying while none is published or S3 is down."""
        backoff = Backoff(1.0, 15.0)
        while True:
            try:
                target = await self._target()
                await self.apply(*target)
                self.deployed = target
                backoff.reset()
                await asyncio.sleep(self.settings.registry_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; health reports why
                known = isinstance(exc, (ModelError, ServiceUnavailable, NotFound))
                if self._bundle is None:
                    self.error = exc.message if known else repr(exc)
                if not known:  # a corrupt bundle, say: the traceback says where it broke
                    log.exception("loading a model bundle failed")
                log.warning("model bundles not (re)loaded: %s (retrying in %.0fs)",
                            exc.message if known else repr(exc), backoff.delay)
                await backoff.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self.follow(), name="load-bundle")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

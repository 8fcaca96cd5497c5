"""The tooling commands of ``imgstream`` (joined to ``app.ops.cli`` by the ``imgstream.commands`` entry point):
the local stack, models export / train / evaluate, bench, soak, table-state and docs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.ops.cli_support import _bundle_path, _progress, _publish, _task_factory, console
from app.core.settings import get_settings

DEFAULT_DATA = Path("../shared/datasets/cifar10/train.tar.gz")


def _onnx_path(backbone: str, random_init: bool = False) -> Path:
    return get_settings().state_dir / "onnx" / f"{backbone}{'-random' if random_init else ''}.onnx"


def _stop_children_on_sigterm() -> None:
    """A long measurement stopped with SIGTERM (a timeout, CI) still runs its ``finally`` blocks,
    which stop the workers it started: without this they outlive it and skew the next run."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def register(cli: typer.Typer, models_cli: typer.Typer) -> None:
    stack_cli = typer.Typer(no_args_is_help=True, help="The local Kafka, PostgreSQL and S3 services.")
    cli.add_typer(stack_cli, name="stack")

    @stack_cli.command("up")
    def stack_up(
        services: list[str] = typer.Argument(None, help="postgres, s3, kafka (default: all), prometheus"),
        with_prometheus: bool = typer.Option(False, help="also run Debian's Prometheus scraping the worker"),
        secure: bool = typer.Option(False, help="the secured twin on its own ports: Kafka over SASL_SSL, "
                                                "PostgreSQL and S3 over TLS, certificates and secrets made for "
                                                "the run; the worker's settings in var/secure/imgstream.env"),
        brokers: int = typer.Option(1, min=1, max=3, help="3: a Kafka cluster of three brokers (ports 29092-29094, "
                                    "replication factor 3, min.insync.replicas 2) in place of the single broker; "
                                    "the worker's settings in var/cluster/imgstream.env"),
    ) -> None:
        """Install what is missing and start the services on 127.0.0.1; idempotent."""
        from tools import stack

        if brokers not in (1, 3):
            raise typer.BadParameter("a cluster has 3 brokers (a quorum that survives one loss); 1 is the default")
        names = list(services or stack.SERVICES) + (["prometheus"] if with_prometheus else [])
        stack.up(get_settings(), names, report=console.print, secure=secure, brokers=brokers)
        if secure:
            from tools.stack.secure import prepare

            console.print(f"worker settings: set -a; . {prepare(get_settings()).env_file}; set +a")


    @stack_cli.command("down")
    def stack_down(services: list[str] = typer.Argument(None),
                   secure: bool = typer.Option(False, help="the secured twin"),
                   brokers: int = typer.Option(1, help="3: the Kafka cluster")) -> None:
        """Stop the services this project started (by pid file)."""
        from tools import stack

        stack.down(get_settings(), services, report=console.print, secure=secure, brokers=brokers)


    @stack_cli.command("status")
    def stack_status(services: list[str] = typer.Argument(None),
                     secure: bool = typer.Option(False, help="the secured twin"),
                     brokers: int = typer.Option(1, help="3: the Kafka cluster")) -> None:
        """Each service with its pid and a real health check; exits 1 if one is unhealthy."""
        from tools import stack

        table = Table("service", "pid", "health")
        rows = stack.status(get_settings(), services, secure=secure, brokers=brokers)
        for name, pid, health in rows:
            table.add_row(name, str(pid or "-"), health if health != "healthy" else "[green]healthy[/]")
        console.print(table)
        raise typer.Exit(0 if all(h == "healthy" for *_, h in rows) else 1)


    image_cli = typer.Typer(no_args_is_help=True, help="The worker image (Dockerfile), built with podman.")
    cli.add_typer(image_cli, name="image")

    @image_cli.command("build")
    def image_build(
        tag: str = typer.Option("localhost/imgstream:dev", help="the image's tag"),
        base: str = typer.Option(None, help="BASE image (default: a local Debian 12 made with mmdebstrap)"),
    ) -> None:
        """Build the worker image from the Dockerfile with podman; prints its size and build time."""
        from tools import containers

        info = containers.build_worker(get_settings(), tag, base)
        console.print(f"{info['tag']}: {info['size_bytes'] / 1e6:.0f} MB (base {info['base']}), "
                      f"built in {info['build_s']} s")

    compose_cli = typer.Typer(no_args_is_help=True, help="docker-compose.yml where no registry is reachable.")
    cli.add_typer(compose_cli, name="compose")

    @compose_cli.command("images")
    def compose_images() -> None:
        """Build the images deploy/compose/local.yml names (Kafka, PostgreSQL, versitygw, Prometheus
        and the worker, on a local Debian 12 base) and serve Docker's API with podman; prints the
        DOCKER_HOST for `docker compose -f docker-compose.yml -f deploy/compose/local.yml up -d`."""
        from tools import compose_local

        for name, tag in compose_local.build_images(get_settings()).items():
            console.print(f"{name}: {tag}")
        print(f"export DOCKER_HOST={compose_local.docker_host(get_settings())}")

    @compose_cli.command("stop-service")
    def compose_stop_service() -> None:
        """Stop the podman service `compose images` started."""
        from tools import compose_local

        console.print("podman service: " + ("stopped" if compose_local.stop_service(get_settings()) else "not running"))

    chart_cli = typer.Typer(no_args_is_help=True, help="The Helm chart (deploy/helm/imgstream).")
    cli.add_typer(chart_cli, name="chart")

    @chart_cli.command("play")
    def chart_play(
        first_port: int = typer.Option(16101, help="web port of the first role's pod; each next role takes the next"),
        down: bool = typer.Option(False, "--down", help="stop and remove the pods of the last play"),
    ) -> None:
        """The chart's pods on this host: `helm template` with deploy/podman/values-local.yaml played by
        `podman kube play` (the image from `imgstream image build`, the local stack on 127.0.0.1)."""
        from app.core.settings import ROLES
        from tools import kube_play

        folder = get_settings().state_dir.resolve() / "kube-play"
        if down:
            kube_play.down(folder)
            console.print("pods removed")
            return
        kube_play.down(folder)
        for old in folder.glob("*.yaml"):
            old.unlink()
        play = kube_play.render(get_settings(), {role: first_port + i for i, role in enumerate(ROLES)})
        kube_play.up(play, folder)
        for name, port in play.ports.items():
            console.print(f"{name}: http://127.0.0.1:{port}")
        console.print("left out: " + "; ".join(f"{k} ({kube_play.LEFT_OUT[k]})" for k in play.left_out))

    @chart_cli.command("check")
    def chart_check() -> None:
        """Offline: helm lint and helm template with the default and every example values file, each
        manifest validated against the Kubernetes schemas and KEDA's CRD (builds helm once)."""
        from tools import k8s

        failed = False
        for label, report in k8s.check(get_settings()).items():
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.by_kind.items()))
            console.print(f"{label}: {report.manifests} manifests valid ({kinds})" if not report.errors
                          else f"[red]{label}[/]: " + "; ".join(report.errors))
            failed |= bool(report.errors)
        raise typer.Exit(1 if failed else 0)

    @cli.command("docs")
    def docs() -> None:
        """Regenerate the settings and metrics tables of docs/REFERENCE.md and the Helm chart's generated values
        (every setting; the measured peak RSS and throughput from docs/BENCHMARKS.json)."""
        from tools import docs as generated

        console.print("docs/REFERENCE.md / values.yaml updated" if generated.update() else "already up to date")

    @models_cli.command("export")
    def models_export(
        backbone: str = typer.Option("efficientnet_lite0", help="efficientnet_lite0 | resnet50"),
        weights: Path = typer.Option(None, help="weights file (resnet50: torchvision's state dict)"),
        random_init: bool = typer.Option(False, help="random weights: for speed measurements only"),
        out: Path = typer.Option(None, help="output .onnx (default var/onnx/<backbone>.onnx)"),
    ) -> None:
        """Export a backbone to ONNX (pooled penultimate features, dynamic batch) in the export env."""
        from tools import exportenv

        out = out or _onnx_path(backbone, random_init)
        args = ["--backbone", backbone, "--out", str(out.resolve())]
        if weights:
            args += ["--weights", str(weights.resolve())]
        if random_init:
            args.append("--random-init")
        console.print(exportenv.run(get_settings(), *args, log=console.print).strip().splitlines()[-1])

    @models_cli.command("train")
    def models_train(
        data: Path = typer.Option(DEFAULT_DATA, help="archive or folder laid out <split>/<class>/<file>"),
        backbone: str = typer.Option(None, help="efficientnet_lite0 | resnet50 (default IMGSTREAM_BACKBONE)"),
        k: int = typer.Option(None, help="descriptors per image (default IMGSTREAM_DESCRIPTOR_K)"),
        reduction: str = typer.Option("lda+pca", help="lda+pca | pca"),
        limit_per_class: int = typer.Option(None, help="use at most N images per class (quick runs)"),
        onnx: Path = typer.Option(None, help="backbone ONNX (default: exported on demand)"),
        sweep: bool = typer.Option(True, help="also measure k = 10/20/50 for pca and lda+pca"),
        publish: bool = typer.Option(True, help="publish the bundle to the object store"),
        docs: Path = typer.Option(None, help="write this markdown report (e.g. docs/MODELS.md)"),
        reducer_from: str = typer.Option(None, help="reuse this bundle's backbone and reduction (same descriptors, "
                                                    "so `imgstream replay` can re-classify history with the new one)"),
    ) -> None:
        """Train fast/balanced/accurate LightGBM classifiers on descriptors and write a versioned bundle."""
        import json

        from models import train as training
        from models.report import models_markdown

        settings = get_settings()
        backbone, k = backbone or settings.backbone, k or settings.descriptor_k
        reducer = None
        if reducer_from:
            from models.bundle import Bundle
            from models.reduction import Reducer

            parent = _bundle_path(reducer_from)
            meta = Bundle.load(parent, extractor=False).manifest
            backbone, onnx, k, reducer = meta["backbone"], parent / "backbone.onnx", meta["k"], Reducer.load(
                parent / "reducer.npz")
        onnx = onnx or _onnx_path(backbone)
        if not onnx.exists():
            models_export(backbone=backbone, weights=None, random_init=False, out=onnx)
        if reducer_from:
            info = meta["onnx"]
        else:
            info_path = onnx.with_suffix(".json")
            info = json.loads(info_path.read_text()) if info_path.exists() else {"backbone": backbone}
        cfg = training.TrainConfig(source=data, onnx=onnx, onnx_info=info, backbone=backbone, k=k, reduction=reduction,
                                   limit_per_class=limit_per_class, cache_dir=settings.cache_dir, sweep=sweep,
                                   threads=settings.ort_threads, reducer=reducer, reducer_from=reducer_from)
        with _progress() as progress:
            path, manifest = training.train(cfg, settings.bundles_dir, _task_factory(progress, "features"),
                                            log=console.print)
        console.print(f"bundle [bold]{manifest['version']}[/] written to {path}")
        if docs:
            docs.parent.mkdir(parents=True, exist_ok=True)
            docs.write_text(models_markdown(manifest))
            console.print(f"report written to {docs}")
        if publish:
            _publish(path)

    @models_cli.command("evaluate")
    def models_evaluate(
        bundle: str = typer.Option("latest", help="bundle version (or 'latest')"),
        data: Path = typer.Option(..., help="archive or folder laid out <split>/<class>/<file>"),
        limit_per_class: int = typer.Option(None),
    ) -> None:
        """Evaluate a bundle and print JSON: top-1, macro-F1, ECE (15 bins), p50/p99 latency per classifier."""
        from models import train as training
        from models.bundle import Bundle
        from models.domain import CLASSIFIERS

        # scored as served: each classifier on the runtime IMGSTREAM_CLASSIFIER_RUNTIME names
        settings = get_settings()
        loaded = Bundle.load(_bundle_path(bundle), threads=settings.ort_threads,
                             onnx_classifiers=settings.onnx_classifiers(CLASSIFIERS))
        with _progress() as progress:
            result = training.evaluate(loaded, data, limit_per_class, _task_factory(progress, "evaluate"))
        print(training.dumps(result))

    @cli.command("bench")
    def bench(
        quick: bool = typer.Option(False, help="a short run (< 2 min) that proves the benchmark works"),
        data: Path = typer.Option(DEFAULT_DATA, help="labelled images to send (archive or folder)"),
        out: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="markdown report; the PNG and JSON go beside it"),
        baseline: str = typer.Option(None, help="git ref whose workers also run the photo phase, for a before/after "
                                     "in this one run"),
        brokers: int = typer.Option(1, help="3: also run the main phase on the three-broker Kafka cluster (started "
                                    "if it is not running), beside the single broker"),
    ) -> None:
        """Measure imgstream against the hardware limit, the original design and a plain HTTP service."""
        import asyncio

        from tools.bench import report, runner

        _stop_children_on_sigterm()
        result = asyncio.run(runner.Bench(get_settings(), quick, data, out, log=console.print, baseline=baseline,
                                          brokers=brokers).run())
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        report.plot(result, png)
        runner.save_json(result, out.with_suffix(".json"))
        out.write_text(report.markdown(result, png.name))
        console.print(f"wrote {out}, {png.name} and {out.with_suffix('.json').name}")


    @cli.command("soak")
    def soak(
        duration: float = typer.Option(3600, help="seconds of load"),
        warmup: float = typer.Option(300, help="seconds at the start left out of the growth figures"),
        interval: float = typer.Option(30, help="seconds between two samples"),
        fraction: float = typer.Option(0.5, help="offered load as a share of the saturation measured first"),
        rate: float = typer.Option(0, help="offered load in images/s (0: fraction x saturation)"),
        data: Path = typer.Option(DEFAULT_DATA, help="labelled images to derive the distinct uploads from"),
        out: Path = typer.Option(Path("docs/RELIABILITY.md"), help="document whose soak section is rewritten; "
                                 "the chart (soak.png) and the figures (soak.json) go beside it"),
    ) -> None:
        """A long run at a share of saturation with distinct images: memory per process, consumer lag and
        end-to-end p99 sampled over time, and what was lost."""
        import asyncio

        from tools.bench import soak as soaking
        from tools.docs import write_section

        _stop_children_on_sigterm()
        result = asyncio.run(soaking.Soak(get_settings(), data, duration=duration, warmup=warmup, interval=interval,
                                          fraction=fraction, rate=rate or None, log=console.print).run())
        png, raw = out.parent / "soak.png", out.parent / "soak.json"
        soaking.save(result, raw)
        soaking.plot(result, png)
        write_section(out, "soak", soaking.markdown(result, png.name), title="Reliability")
        console.print_json(data=result["summary"])
        console.print(f"lost {result['lost']} of {result['accepted']}; wrote {out}, {png.name} and {raw.name}")


    @cli.command("table-state")
    def table_state(
        sizes: str = typer.Option("0,100000,1000000", help="table sizes (entries), comma-separated"),
        stores: str = typer.Option("memory,rocksdb", help="stores to measure, comma-separated"),
        failover: int = typer.Option(1_000_000, help="entries of the kill -9 failover runs (0: skip them)"),
        data: Path = typer.Option(DEFAULT_DATA, help="labelled images (a few are uploaded)"),
        out: Path = typer.Option(Path("docs/RELIABILITY.md"), help="document whose table section is rewritten; "
                                 "the figures (table-state.json) go beside it"),
    ) -> None:
        """The descriptor table's cost per store and size: worker RSS, start to first extraction, restart,
        and failover after kill -9 with and without standby replicas."""
        import asyncio
        import json

        from tools.bench import state
        from tools.docs import write_section

        _stop_children_on_sigterm()
        bench = state.StateBench(get_settings(), data, [int(n) for n in sizes.split(",") if n],
                                 [s.strip() for s in stores.split(",") if s.strip()], failover, log=console.print)
        result = asyncio.run(bench.run())
        raw = out.parent / "table-state.json"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(result, indent=1))
        write_section(out, "table-state", state.markdown(result), title="Reliability")
        console.print(f"wrote {out} and {raw.name}")


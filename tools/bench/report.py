"""docs/BENCHMARKS.md and the latency-vs-load plot from one benchmark result."""

from __future__ import annotations

from pathlib import Path

from tools.bench.cpu import BACKBONE, EVENT_LOOP, S3_CLIENT


# The original design's promised per-prediction latency of each classifier.
DESIGN_CLASSIFIER_MS = {"fast": 15, "balanced": 25, "accurate": 45}


def _f(v, fmt=".1f") -> str:
    try:
        return format(v, fmt)
    except (TypeError, ValueError):
        return "-"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ol = result["imgstream"]["open_loop"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    rates = [o["rate"] for o in ol]
    for q, style in ((50, "o-"), (95, "s--"), (99, "^:")):
        ax.plot(rates, [o[f"end_to_end_{q}_ms"] for o in ol], style, label=f"imgstream end to end p{q}")
    sync = result.get("sync")
    if sync:
        ax.plot([sync["rate"]], [sync["latency_p50_ms"]], "kx", ms=10, label="sync HTTP peer p50 (request)")
        ax.plot([sync["rate"]], [sync["latency_p99_ms"]], "k+", ms=12, label="sync HTTP peer p99 (request)")
    ax.axhline(150, color="grey", lw=0.8, ls="-.", label="original design: ~150 ms")
    ax.set_xlabel("offered load (images/s, Poisson arrivals)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"imgstream {result['bundle']['backbone']}: latency vs offered load")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _config(lim: dict) -> str:
    threads = lim.get("intra_op_threads")
    par = lim.get("parallel_chunks", 1)
    return (f"batch {lim['batch']}, {'one ONNX call per batch' if par == 1 else f'split in {par} ONNX calls side by side'}, "
            f"{f'{threads} intra-op thread' + ('s' if threads > 1 else '') if threads else 'default intra-op threads'}"
            f"{' each' if par > 1 else ''}")


def _limit_rows(lim: dict) -> list[str]:
    """Both bare configurations; the limit (ratio 1.00) is the faster of the two."""
    rows = []
    for key, what in (("extractor", "the extractor's configuration"), ("ort_default", "onnxruntime's defaults")):
        one = lim[key]
        mark = " **(the limit)**" if lim["basis"] == key else ""
        rows.append(f"| bare onnxruntime, decode + preprocess + inference, {what}: {_config(one)}{mark} | "
                    f"{_f(one['images_per_s'])} | {_f(one['images_per_s'] / lim['images_per_s'], '.2f')} |")
    return rows


def _cpu_budget(sat: dict, lim: dict) -> list[str]:
    """Where the CPU went during the saturation phase, and the throughput that cost allows."""
    cpu = sat.get("cpu")
    if not cpu:
        return []
    total = cpu["total_ms_per_image"]
    lines = ["Where the CPU went during the saturation phase (CPU milliseconds per image, each process with its "
             "children and threads; all of them share the same cores):", "",
             "| process | CPU ms per image | share |", "|---|---|---|"]
    for part, v in sorted(cpu["ms_per_image"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {_f(v, '.2f')} | {_f(100 * v / total, '.0f')} % |")
    lines.append(f"| **all** (cores {_f(100 * cpu['utilisation'], '.0f')} % busy) | **{_f(total, '.2f')}** | 100 % |")
    if "kafka_jit_ms_per_image" in cpu:
        lines += ["", f"Of Kafka's share, its JVM's JIT compiler threads took {_f(cpu['kafka_jit_ms_per_image'], '.2f')} "
                      "CPU ms per image: compiling the broker's code, a cost that fades as the broker warms up."]
    if "machine_busy" in cpu:
        lines += ["", f"The machine as a whole (every process and the kernel) was {_f(100 * cpu['machine_busy'], '.0f')} % "
                      "busy during the phase (target >= 95 %)."]
    lines += _worker_threads(cpu)
    if lim.get("cpu_ms_per_image"):
        bound = 1000 * cpu["cores"] / total
        lines += ["", f"The bare limit costs {_f(lim['cpu_ms_per_image'], '.2f')} CPU ms per image. At "
                      f"{_f(total, '.1f')} CPU ms per image the whole system could reach at most {_f(bound)} images/s "
                      f"with all {cpu['cores']} cores busy, a ratio of {_f(bound / lim['images_per_s'], '.2f')} to the "
                      "limit: the ceiling for this run on this machine, whatever the scheduling."]
    return [*lines, ""]


def _passes(sat: dict) -> str:
    runs = sat.get("passes_images_per_s")
    if not runs:
        return ""
    return f"; the median of {len(runs)} passes: " + " / ".join(_f(r) for r in runs) + " images/s"


def _paired_row(sat: dict) -> list[str]:
    paired = sat.get("paired_limits")
    if not paired:
        return []
    return [f"| the same passes, each against the limit measured just before it ("
            + " / ".join(_f(x) for x in paired["limits_images_per_s"]) + " images/s; the host's speed drifts within "
            "a run): ratios " + " / ".join(_f(x, ".2f") for x in paired["ratios"])
            + f" | | **{_f(paired['median_ratio'], '.2f')}** (median) |"]


def _paired_target(sat: dict) -> str:
    paired = sat.get("paired_limits")
    if not paired:
        return ""
    median = paired["median_ratio"]  # three decimals: a median just under the target rounds to it
    return f"; against the paired limits, median {median:.3f}: {'met' if median >= 0.65 else 'NOT met'}"


def _worker_threads(cpu: dict) -> list[str]:
    """The worker's CPU by thread role, and what lies outside the backbone's own work (decode +
    preprocess + inference, on the onnx* and decode* threads) for the worker and the system."""
    threads = cpu.get("threads_ms_per_image")
    if not threads:
        return []
    backbone = threads.get(BACKBONE, 0.0)
    worker_rest = cpu["ms_per_image"]["worker"] - backbone
    system_rest = cpu["total_ms_per_image"] - backbone
    lines = ["", "Inside the worker, by thread (OS thread names set by its pools; CPU ms per image):", "",
             "| threads | CPU ms per image |", "|---|---|"]
    lines += [f"| {k} | {_f(v, '.2f')} |" for k, v in threads.items()]
    lines += ["", f"Outside the backbone's own work: the worker **{_f(worker_rest, '.2f')}** CPU ms per image "
                  f"(target <= 2.5: {'met' if worker_rest <= 2.5 else 'NOT met'}), the whole system "
                  f"**{_f(system_rest, '.2f')}** (target <= 5: {'met' if system_rest <= 5 else 'NOT met'})."]
    return lines


def _roles_cpu(by_role: dict[str, dict[str, float]]) -> list[str]:
    """Each role's CPU per image by thread, one process per role: where the event loop's time goes
    stage by stage (in the all-roles worker these share one loop)."""
    if not by_role:
        return []
    groups = list(next(iter(by_role.values())))
    lines = ["Each role in its own worker process over the same saturation (uploads through the front; "
             "the extractor fetches each image from S3 and decodes it, as a separately deployed one does), "
             "CPU ms per image by thread:", "",
             "| role | " + " | ".join(groups) + " | all threads |", "|---|" + "---|" * (len(groups) + 1)]
    for role, threads in by_role.items():
        lines.append(f"| `{role}` | " + " | ".join(_f(threads.get(g), ".2f") for g in groups)
                     + f" | {_f(sum(threads.values()), '.2f')} |")
    loops = {role: threads.get(EVENT_LOOP, 0.0) for role, threads in by_role.items()}
    lines += ["", f"Event loops of all roles together: {_f(sum(loops.values()), '.2f')} CPU ms per image "
                  f"(the HTTP front {_f(loops.get('front'), '.2f')}, the extractor {_f(loops.get('extractor'), '.2f')}, "
                  f"the three classifiers {_f(sum(v for k, v in loops.items() if k.startswith('classifier')), '.2f')}).",
              ""]
    return lines


def markdown(r: dict, png_name: str) -> str:
    m, lim, im = r["machine"], r["limit"], r["imgstream"]
    sat = im["saturation"]["images_per_s"]
    ol = im["open_loop"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `imgstream bench{' --quick' if r['quick'] else ''}` ({r['started']} to {r['finished']} UTC). "
        "Every number below was measured in this one run, on this machine, with the load generator on the same "
        "cores as the system under test; compare ratios, not absolute numbers, across runs.",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; Python {m['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in m["libs"].items()),
        f"- Model bundle: `{r['bundle']['version']}` ({r['bundle']['backbone']}, k = {r['bundle']['k']})",
        f"- GPU: {r['gpu']}",
        "",
        "## 1-2. Throughput against the hardware limit",
        "",
        "The limit is bare onnxruntime doing the extractor's work (decode + preprocess + inference) on the same "
        "images with nothing else running, in the faster of two configurations: the extractor's own and "
        "onnxruntime's defaults.",
        "",
        "| | images/s | ratio |",
        "|---|---|---|",
        *_limit_rows(lim),
        f"| imgstream at saturation (closed loop, 32 in flight, {im['saturation']['images']} images, upload -> third "
        f"prediction committed{_passes(im['saturation'])}) | {_f(sat)} | **{_f(sat / lim['images_per_s'], '.2f')}** |",
        *_paired_row(im["saturation"]),
        "",
        f"Targets: ratio >= 0.65 on this 2-core machine, where the broker, S3 server, PostgreSQL and the load "
        f"generator share the cores ({sat / lim['images_per_s']:.3f}: "
        f"{'met' if sat / lim['images_per_s'] >= 0.65 else 'NOT met'}"
        f"{_paired_target(im['saturation'])}); ratio >= 0.85 "
        f"({'met' if sat / lim['images_per_s'] >= 0.85 else 'NOT met'}). Original design: "
        f"100+ images/s ({'met' if sat >= 100 else 'NOT met'}). Single-image extractor latency "
        f"(decode + preprocess + ONNX + reduce, batch 1): {_f(lim['single_image_p50_ms'])} ms p50.",
        "",
        *_one_decode(im.get("crops")),
        *_cpu_budget(im["saturation"], lim),
        "## 3. Open-loop latency (Poisson arrivals), from upload accepted to the third prediction committed",
        "",
        "End to end runs from the moment the upload is accepted (object written, Kafka produce confirmed, 202 "
        "about to be sent) to the commit of the third prediction, from PostgreSQL's timestamps. 'From request' "
        "adds the upload itself (arrival of the request to the third prediction). Queue: accepted -> extraction "
        "started (Kafka, the micro-batch wait); extract: fetch + decode + ONNX + reduce + publish; classify: "
        "extraction finished -> third prediction committed.",
        "",
        "| load | offered images/s | accepted | end to end p50 / p95 / p99 ms | from request p50 / p99 | "
        "queue p50 / p99 | extract p50 / p99 | classify p50 / p99 | upload HTTP p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in ol:
        lines.append(
            f"| {o['fraction']:.0%} | {_f(o['rate'])} | {o['accepted']}/{o['sent']} | "
            f"{_f(o['end_to_end_50_ms'])} / {_f(o['end_to_end_95_ms'])} / {_f(o['end_to_end_99_ms'])} | "
            f"{_f(o['from_request_50_ms'])} / {_f(o['from_request_99_ms'])} | {_f(o['queue_50_ms'])} / {_f(o['queue_99_ms'])} | {_f(o['extract_50_ms'])} / {_f(o['extract_99_ms'])} | "
            f"{_f(o['classify_50_ms'])} / {_f(o['classify_99_ms'])} | {_f(o['upload_http_p50_ms'])} |")
    if ol:
        low = ol[0]
        budget = lim["single_image_p50_ms"] + 25
        lines += ["", f"At 10 % load: p50 {_f(low['end_to_end_50_ms'])} ms against a target of the extractor's "
                      f"single-image latency + 25 ms = {_f(budget)} ms "
                      f"({'met' if low['end_to_end_50_ms'] <= budget else 'NOT met'}); the original design said "
                      "~150 ms end to end.", "", f"![latency vs load]({png_name})", ""]
    lines += [
        "## 4. Sizes and per-prediction cost inside the pipeline",
        "",
        "| | measured | original design |",
        "|---|---|---|",
        f"| `images-input-stream` message | {_f(im['input_message_bytes'], '.0f')} bytes | ~200 bytes |",
        f"| `image-features-stream` message (k = {r['bundle']['k']}) | {1 + 16 + 4 * r['bundle']['k']} bytes "
        "(+ trace headers) | 160 bytes |",
    ]
    for c, v in im["classifier_p99_ms"].items():
        design = DESIGN_CLASSIFIER_MS[c]
        lines.append(f"| {c} classifier p99 per prediction (batched in the pipeline) | {_f(v, '.3f')} ms | {design} ms |")
    lines += ["", "## 5. Peers, on the same kind of images in the same run", "",
              "| architecture | images/s | ratio to imgstream | latency at 10 % of imgstream's saturation |",
              "|---|---|---|---|",
              f"| imgstream | {_f(sat)} | 1.00 | p50 {_f(ol[0]['end_to_end_50_ms'] if ol else None)} ms, "
              f"p99 {_f(ol[0]['end_to_end_99_ms'] if ol else None)} ms (upload accepted -> 3rd prediction) |"]
    if "sync" in r:
        s = r["sync"]
        lines.append(f"| plain synchronous HTTP service (S3 + ONNX + 3 x LightGBM + PostgreSQL in the request, no "
                     f"Kafka) | {_f(s['images_per_s'])} | {_f(s['images_per_s'] / sat, '.2f')} | p50 "
                     f"{_f(s['latency_p50_ms'])} ms, p99 {_f(s['latency_p99_ms'])} ms (whole request) |")
    if "before" in r:
        b = r["before"]
        lines.append(f"| original 'before' design (full {_f(b['message_bytes_mean'], '.0f')}-byte images through Kafka, "
                     f"a backbone in each of 3 classifier services) | {_f(b['images_per_s'])} | "
                     f"{_f(b['images_per_s'] / sat, '.2f')} | p50 {_f(b.get('latency_p50_ms'))} ms, p99 "
                     f"{_f(b.get('latency_p99_ms'))} ms (produce confirmed -> 3rd prediction) |")
    lines += ["", "The 'before' peer is fed straight into Kafka (no HTTP, no S3), which favours it. The synchronous "
                  "peer does no micro-batching across requests: each request runs the backbone on one image."]
    targets = []
    if r.get("sync", {}).get("images_per_s"):
        x = sat / r["sync"]["images_per_s"]
        targets.append(f"{_f(x, '.2f')}x the synchronous peer (target >= 1.0: {'met' if x >= 1.0 else 'NOT met'})")
    if r.get("before", {}).get("images_per_s"):
        x = sat / r["before"]["images_per_s"]
        targets.append(f"{_f(x, '.2f')}x the 'before' design (target >= 2.7: {'met' if x >= 2.7 else 'NOT met'})")
    if targets:
        lines += ["", "imgstream's throughput is " + " and ".join(targets) + "."]
    lines.append("")
    if "scaling" in r:
        sc = r["scaling"]
        lines += ["## 6. Scaling: worker processes on 4 partitions", "", "| workers | images/s | ratio |",
                  "|---|---|---|"]
        for w, v in sc.items():
            lines.append(f"| {w} | {_f(v)} | {_f(v / sc['1'], '.2f')} |")
        lines += ["", "On this 2-core machine both workers share the same two cores with each other, the broker, "
                      "PostgreSQL, the S3 server and the load generator, so a second process adds no compute here; "
                      "it adds fault tolerance (see docs/RELIABILITY.md). With more cores, partitions spread the "
                      "extractor over processes.", ""]
    lines += ["## 7. Memory: peak RSS", "", "| process | peak RSS (MB) | original budget |", "|---|---|---|",
              f"| imgstream worker, every role | {_f(im['peak_rss_mb'], '.0f')} | 2048 + 3 x 512 |"]
    for role, v in r.get("roles_rss_mb", {}).items():
        budget = "2048" if role == "extractor" else ("512" if role.startswith("classifier") else "-")
        lines.append(f"| worker `--role {role}` | {_f(v, '.0f')} | {budget} |")
    if "before" in r:
        for c, v in r["before"]["peak_rss_mb_per_classifier"].items():
            lines.append(f"| 'before' {c} service (own backbone) | {_f(v, '.0f')} | 512 |")
    if "sync" in r:
        lines.append(f"| synchronous HTTP peer | {_f(r['sync']['peak_rss_mb'], '.0f')} | - |")
    lines.append("")
    lines += _roles_cpu(r.get("roles_cpu_ms_per_image", {}))
    if "resnet50_random" in r:
        rr = r["resnet50_random"]
        p = rr["pipeline"]
        rsat = p["saturation"]["images_per_s"]
        lines += ["## 8. ResNet50 — RANDOM WEIGHTS, speed only", "",
                  "torchvision's ImageNet weights cannot be downloaded on this machine; this ResNet50 has random "
                  "weights, so its predictions are meaningless and only its speed is reported.", "",
                  "| | images/s | ratio |", "|---|---|---|",
                  *_limit_rows(rr["limit"]),
                  f"| imgstream at saturation | {_f(rsat)} | **{_f(rsat / rr['limit']['images_per_s'], '.2f')}** |", "",
                  *_cpu_budget(p["saturation"], rr["limit"])]
        if p.get("open_loop"):
            o = p["open_loop"][0]
            lines += [f"At 10 % load ({_f(o['rate'])} images/s): end to end p50 {_f(o['end_to_end_50_ms'])} ms, "
                      f"p99 {_f(o['end_to_end_99_ms'])} ms (target p99 <= 150 ms: "
                      f"{'met' if o['end_to_end_99_ms'] <= 150 else 'NOT met'}); single-image extractor latency "
                      f"{_f(rr['limit']['single_image_p50_ms'])} ms.", ""]
    elif r["quick"]:
        lines += ["## 6-8.", "", "Scaling, per-role memory and ResNet50 are measured by the full `imgstream bench`, "
                  "not by `--quick`.", ""]
    if "photos" in r:
        lines += _photos(r["photos"])
    if "levers" in r:
        lines += _levers(r["levers"])
    if im.get("event_loop_profile"):
        lines += _loop_profile(im["event_loop_profile"], im["saturation"])
    if "shadows" in r:
        lines += _shadows(r["shadows"])
    if "cluster" in r:
        lines += _cluster(r["cluster"])
    return "\n".join(lines)


def _cluster(c: dict) -> list[str]:
    one, three = c["single"], c["cluster"]
    rows = []
    for name, v in (("one broker (replication factor 1)", one),
                    ("three brokers (replication factor 3, min.insync.replicas 2, idempotent producer)", three)):
        o = v["open_loop"]
        rows.append(f"| {name} | {_f(v['images_per_s'])} | {_f(o['end_to_end_50_ms'])} | {_f(o['end_to_end_99_ms'])} | "
                    f"{_f(v['kafka_cpu_ms_per_image'], '.2f')} |")
    return ["## 12. A Kafka cluster of three brokers", "",
            "The main phase (one saturation pass, then 10 % of it) against the single broker and, right after, "
            "against `imgstream stack up --brokers 3` on the same cores: every write is kept by three brokers and "
            "confirmed once two have it.", "",
            "| Kafka | imgstream images/s | end to end p50 at 10 % (ms) | p99 (ms) | Kafka CPU ms per image (all brokers) |",
            "|---|---|---|---|---|", *rows, "",
            f"Throughput with three brokers: {_f(three['images_per_s'] / one['images_per_s'], '.2f')}x the single "
            f"broker's; Kafka's CPU per image {_f(three['kafka_cpu_ms_per_image'] / max(one['kafka_cpu_ms_per_image'], 1e-9), '.1f')}x.", ""]


def _crop_share(crops: dict | None) -> tuple[float, float] | None:
    """(images the extractor took, the share of them that used the crop decoded at upload)."""
    total = sum((crops or {}).values())
    return (total, crops.get("upload", 0.0) / total) if total else None


def _one_decode(crops: dict | None) -> list[str]:
    share = _crop_share(crops)
    if share is None:
        return []
    total, up = share
    return [f"One decode per image: of the {total:.0f} images this worker's extractor took (warm-up and "
            f"saturation passes), {100 * up:.0f} % used the crop its upload handler decoded; "
            f"{crops.get('fetched', 0):.0f} were fetched back from S3 and decoded again (a backlog longer than "
            "IMGSTREAM_LOCAL_OBJECT_CACHE_MB holds).", ""]


def _photos(ph: dict) -> list[str]:
    base = ph.get("baseline")
    lines = ["## 10. Photos", "",
             "JPEGs made from the two photos scikit-learn ships (tools/bench/photos.py: resized, cropped, a little "
             "sensor-like noise, quality 92; every upload distinct bytes, so the descriptor table never answers). "
             "Limit: bare onnxruntime doing the extractor's work on the same photos. End to end: upload accepted "
             "-> third prediction committed, at 10 % of imgstream's saturation." +
             (f" Baseline: the same phase run by workers checked out at `{base}`, in this run." if base else ""), "",
             "| size | MB per JPEG | limit images/s | imgstream images/s | ratio to limit | end to end p50 / p99 ms "
             "| upload HTTP p50 ms | worker CPU ms per image |" + (" baseline images/s | speed-up |" if base else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if base else "")]
    for name, row in ph["sizes"].items():
        im = row["imgstream"]
        sat = im["saturation"]["images_per_s"]
        o = im["open_loop"][0] if im["open_loop"] else {}
        cpu = im["saturation"].get("cpu", {}).get("ms_per_image", {}).get("worker")
        cells = [name, _f(row["mean_bytes"] / 1e6, ".2f"), _f(row["limit"]["images_per_s"]), _f(sat),
                 _f(sat / row["limit"]["images_per_s"], ".2f"),
                 f"{_f(o.get('end_to_end_50_ms'))} / {_f(o.get('end_to_end_99_ms'))}", _f(o.get("upload_http_p50_ms")),
                 _f(cpu)]
        if base:
            b = row["baseline"]["saturation"]["images_per_s"]
            cells += [_f(b), _f(sat / b, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Peers on the same photos (throughput as a ratio to imgstream's):", "",
              "| size | synchronous HTTP peer images/s | ratio | 'before' design images/s | ratio |", "|---|---|---|---|---|"]
    for name, row in ph["sizes"].items():
        sat = row["imgstream"]["saturation"]["images_per_s"]
        s, b = row["sync"], row["before"]
        before = ([_f(b["images_per_s"]), _f(b["images_per_s"] / sat, ".2f")] if "images_per_s" in b
                  else [b["skipped"], "-"])
        lines.append(f"| {name} | {_f(s['images_per_s'])} | {_f(s['images_per_s'] / sat, '.2f')} | " + " | ".join(before)
                     + " |")
    shares = {name: _crop_share(row["imgstream"].get("crops")) for name, row in ph["sizes"].items()}
    if all(shares.values()):
        lines += ["", "Crops the extractor took from its upload handler (one decode per photo), against those fetched "
                      "back from S3 and decoded again: " + ", ".join(f"{name} {100 * sh[1]:.0f} %"
                                                                    for name, sh in shares.items()) + "."]
    if "4032x3024" in ph["sizes"]:
        row = ph["sizes"]["4032x3024"]
        o = row["imgstream"]["open_loop"][0] if row["imgstream"]["open_loop"] else {}
        p50 = o.get("end_to_end_50_ms")
        lines += ["", f"4032x3024: end to end p50 at 10 % load {_f(p50)} ms (target <= 60 ms: "
                      f"{'met' if p50 is not None and p50 <= 60 else 'NOT met'})."]
        if base:
            speed = row["imgstream"]["saturation"]["images_per_s"] / row["baseline"]["saturation"]["images_per_s"]
            lines[-1] += f" Throughput {_f(speed, '.2f')}x the baseline's (target >= 5x: {'met' if speed >= 5 else 'NOT met'})."
        if "signed" in row:
            lines += ["", *_signing(ph["signing"], ph["signs"], row["imgstream"]["saturation"],
                                    row["signed"]["saturation"])]
    return lines + [""]


def _signing(mode: str, signs: bool, configured: dict, signed: dict) -> list[str]:
    """The photo phase's puts as configured against the same worker with every body signed."""
    def cells(name: str, sat: dict) -> str:
        ms, threads = sat["cpu"]["ms_per_image"], sat["cpu"].get("threads_ms_per_image", {})
        return (f"| {name} | {_f(sat['images_per_s'])} | {_f(sat['cpu']['total_ms_per_image'])} | "
                f"{_f(ms.get('worker'))} | {_f(threads.get(BACKBONE))} | {_f(threads.get(S3_CLIENT))} | "
                f"{_f(ms.get('s3'))} |")

    def s3_cost(sat: dict) -> float:
        return sat["cpu"].get("threads_ms_per_image", {}).get(S3_CLIENT, 0.0) + sat["cpu"]["ms_per_image"].get("s3", 0.0)

    return [f"4032x3024 at saturation in this run, each put's body signed (SigV4's SHA-256 of the body, computed by "
            f"obstore and checked by the S3 server) against the run's setting (IMGSTREAM_S3_PAYLOAD_SIGNING={mode}: "
            f"{'signed' if signs else 'unsigned'} on this endpoint):", "",
            "| puts | images/s | whole system CPU ms per image | worker | of which the backbone | of which the S3 "
            "client | S3 server |", "|---|---|---|---|---|---|---|",
            cells(f"as configured ({mode})", configured), cells("signed", signed),
            "", f"Signed: {_f(signed['images_per_s'] / configured['images_per_s'], '.2f')}x the throughput. What "
                f"signing costs directly (the S3 client's threads and the S3 server): "
                f"{_f(s3_cost(signed) - s3_cost(configured), '+.1f')} CPU ms per photo. The backbone does the same work "
                f"in both passes, so a difference in its CPU per photo is the host's speed."]


def _shadows(sh: dict) -> list[str]:
    configs = sh["configs"]
    base = configs["none"]
    lines = ["## 13. Shadow bundles: what one and two cost", "",
             f"One worker with every role at saturation (closed loop, CIFAR images), serving `{sh['serving']}` with "
             f"none, one and two shadow bundles (PCA, k = 10: `{sh['shadows'][0]}`; k = 50: `{sh['shadows'][1]}`) on "
             "the same backbone: the backbone runs once per image, each shadow adds a reduction, a descriptor "
             "message and three LightGBM predictions with their rows.", "",
             "| configuration | images/s | ratio | worker CPU ms per image | whole system CPU ms per image | "
             "prediction rows per image |", "|---|---|---|---|---|---|"]
    for name, v in configs.items():
        cpu = v["cpu"]
        rows = sum(v["rows"].values()) / max(1, v["rows"].get(sh["serving"], 0) / 3)  # per image served
        lines.append(f"| {name} | {_f(v['images_per_s'])} | {_f(v['images_per_s'] / base['images_per_s'], '.2f')} | "
                     f"{_f(cpu['ms_per_image']['worker'])} | {_f(cpu['total_ms_per_image'])} | {_f(rows, '.0f')} |")
    return lines + [""]


def _levers(lv: dict) -> list[str]:
    base = next(iter(lv.values()))
    lines = ["## 11. Levers on the worker, side by side", "",
             "One worker with every role at saturation (closed loop, CIFAR images) per configuration: the event "
             "loop implementation (IMGSTREAM_EVENT_LOOP), the client of the per-image S3 calls "
             "(IMGSTREAM_S3_DATA_CLIENT), the extractor's batches in flight (IMGSTREAM_EXTRACT_PIPELINE_DEPTH), "
             "the classifiers' agents (IMGSTREAM_CLASSIFIER_AGENTS: one shared by the three unless stated) and "
             "what computes their raw scores (IMGSTREAM_CLASSIFIER_RUNTIME: onnxruntime's tree ensembles unless "
             "stated).", "",
             "| configuration | images/s | ratio | worker CPU ms per image | of which outside the backbone | "
             "whole system CPU ms per image | cores busy |",
             "|---|---|---|---|---|---|---|"]
    for name, v in lv.items():
        cpu = v["cpu"]
        backbone = cpu.get("threads_ms_per_image", {}).get(BACKBONE)
        rest = cpu["ms_per_image"]["worker"] - backbone if backbone is not None else None
        lines.append(f"| {name} | {_f(v['images_per_s'])} | {_f(v['images_per_s'] / base['images_per_s'], '.2f')} | "
                     f"{_f(cpu['ms_per_image']['worker'])} | {_f(rest)} | {_f(cpu['total_ms_per_image'])} | "
                     f"{_f(100 * cpu.get('machine_busy', cpu['utilisation']), '.0f')} % |")
    return lines + [""]


def _loop_cpu(sat: dict) -> str:
    """The CPU the main thread used in the measured pass (from /proc), beside py-spy's busy share,
    which also counts the time the thread waited for a core (tools/bench/profile.py)."""
    ms = sat.get("cpu", {}).get("threads_ms_per_image", {}).get(EVENT_LOOP)
    if ms is None:
        return ""
    return (f" In the measured pass the main thread used {_f(ms, '.2f')} CPU ms per image, "
            f"{_f(ms * sat['images_per_s'] / 10, '.0f')} % of one core at {_f(sat['images_per_s'])} images/s.")


def _loop_profile(p: dict, sat: dict) -> list[str]:
    lines = ["## 12. The event loop at saturation (py-spy)", "",
             f"py-spy sampled the worker at 100 samples/s for the {_f(p['seconds'])} s of a second saturation pass "
             "after the measured one (the profiler's own CPU would otherwise come out of the measured throughput"
             + (f": {_f(p['images_per_s_under_py_spy'])} images/s under py-spy" if "images_per_s_under_py_spy" in p else "")
             + f"). The event-loop thread (the main thread) was busy **{_f(100 * p['event_loop_busy'], '.0f')} %** "
             "of the time (a sample counts as busy when the OS has the thread running or ready to run: waiting in "
             "epoll is idle, waiting for one of the shared cores is not); the busiest other threads (ONNX, decode, "
             "predict pools): " + (", ".join(f"{name} {_f(100 * b, '.0f')} %" for name, b in p["other_threads"])
                                   if "other_threads" in p else
                                   ", ".join(f"{_f(100 * b, '.0f')} %" for b in p["other_threads_busy"])) + "."
             + _loop_cpu(sat), "",
             "| top frames of the event-loop thread, own time | share of the phase |", "|---|---|"]
    lines += [f"| `{f}` | {_f(100 * s, '.1f')} % |" for f, s in p["top_own"]]
    lines += ["", "| top frames of the event-loop thread, inclusive | share of the phase |", "|---|---|"]
    lines += [f"| `{f}` | {_f(100 * s, '.1f')} % |" for f, s in p["top_inclusive"]]
    return lines + [""]

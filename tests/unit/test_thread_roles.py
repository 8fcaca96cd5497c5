"""The worker's pool threads carry their names to the OS, and the bench's CPU meter groups a
process's threads by those names: the backbone's CPU apart from the event loop's."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from app.core.threads import Pool
from tools.bench.cpu import BACKBONE, S3_CLIENT, jit_cpu, per_image_ms, thread_cpu

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names: Linux /proc")


def _comm() -> str:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_pool_threads_carry_their_names_to_the_os():
    with Pool(1, "onnx") as pool:
        assert pool.submit(_comm).result() == "onnx_0"
    # a thread started from a named one inherits the name (onnxruntime's intra-op threads do)
    with Pool(1, "decode") as pool:
        def child() -> str:
            out: list[str] = []
            t = threading.Thread(target=lambda: out.append(_comm()))
            t.start()
            t.join()
            return out[0]
        assert pool.submit(child).result() == "decode_0"


@pytest.mark.parametrize("prefix,group", [
    ("onnx", BACKBONE),
    ("tokio-rt-worker", S3_CLIENT),  # obstore's Rust runtime names its threads so
])
def test_thread_cpu_counts_a_named_pool_in_its_group(prefix, group):
    with Pool(1, prefix) as pool:
        pool.submit(lambda: None).result()  # the thread exists before the first read
        before = thread_cpu(os.getpid())
        pool.submit(_spin, 0.3).result()
        after = thread_cpu(os.getpid())
    spent = {k: after[k] - before[k] for k in before}
    assert spent[group] >= 0.2
    assert all(v < 0.2 for k, v in spent.items() if k != group), spent


def test_jit_cpu_counts_only_compiler_threads():
    # HotSpot's compiler threads are "C2 CompilerThread0", which Linux cuts to 15 characters
    with Pool(1, "C2 CompilerThread") as jit, Pool(1, "kafka-request") as work:
        jit.submit(lambda: None).result()
        work.submit(lambda: None).result()
        before = jit_cpu(os.getpid())
        work.submit(_spin, 0.3).result()
        mid = jit_cpu(os.getpid())
        jit.submit(_spin, 0.3).result()
        after = jit_cpu(os.getpid())
    assert mid - before < 0.1
    assert after - mid >= 0.2


def test_per_image_ms_divides_each_group_and_never_goes_below_zero():
    before = {BACKBONE: 1.0, S3_CLIENT: 0.5}
    # the S3 client's threads ended between the reads: missing from the second one
    after = {BACKBONE: 1.6}
    assert per_image_ms(before, after, 300) == pytest.approx({BACKBONE: 2.0, S3_CLIENT: 0.0})

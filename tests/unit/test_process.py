"""The one process wrapper: a child in its own group, stopped with its children; a pid file that
outlives the starter and never mistakes a recycled pid for ours."""

import os
import signal
import sys
import time

import psutil

from tools.base.process import Process

SLEEPER = [sys.executable, "-c", "import subprocess, sys, time; "
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]


def test_stop_ends_the_process_and_its_children(tmp_path):
    p = Process("sleeper", tmp_path / "log").start(SLEEPER)
    time.sleep(0.5)
    children = psutil.Process(p.pid()).children()
    assert len(children) == 1
    assert p.stop(timeout=5) is True
    assert p.pid() is None and p.exited() == -signal.SIGTERM
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
    assert p.stop() is False  # already stopped


def test_a_pid_file_outlives_the_starter_and_ignores_a_recycled_pid(tmp_path):
    pid_file = tmp_path / "run" / "x.pid"
    started = Process("x", tmp_path / "log", pid_file).start([sys.executable, "-c", "import time; time.sleep(60)"])
    later = Process("x", tmp_path / "log", pid_file)  # another command, reading the pid file
    assert later.pid() == started.pid()
    pid_file.write_text(f"{os.getpid()} 12345.0\n")  # a live pid with another start time: not ours
    assert later.pid() is None
    pid = started.popen.pid
    later.adopt(pid)
    assert later.stop(timeout=5, group=False) is True
    assert not pid_file.exists() and not psutil.pid_exists(pid)

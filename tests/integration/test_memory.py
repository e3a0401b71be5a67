"""Freed heap memory goes back to the OS (glibc's malloc_trim), so RSS follows the live size."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_released_memory_leaves_the_resident_set() -> None:
    script = textwrap.dedent(
        """
        import re
        from iceprod_exporter.memory import release_freed_memory

        def rss():
            status = open("/proc/self/status").read()
            return int(re.search(r"VmRSS:\\s+(\\d+)", status).group(1)) // 1024

        held = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # ~200 MB, malloc'd
        keep = held[::1000]  # a few survivors pin the heap's top, as in a real process
        del held
        before = rss()
        release_freed_memory()
        print(before, rss())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    before, after = map(int, out.stdout.split())
    assert before - after > 100, f"resident MiB before {before}, after {after}"

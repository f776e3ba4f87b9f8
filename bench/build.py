"""Compile the C parts of the harness (load generator, ceiling server) at run time.

Binaries go to a cache directory (``bench/.cache`` unless ``SOCKSERVE_BENCH_CACHE`` says
otherwise; git-ignored) under a name that hashes the source, the compiler and its flags,
so an edit or a new compiler rebuilds and nothing stale is ever run. Each build writes a
temporary file and renames it into place, so two harnesses started at once (the test
suite and a developer) never run a half-written binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
#: Optimised, warnings on; -lm for the load generator's percentile maths.
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
LDLIBS = ("-lm",)


class BuildError(RuntimeError):
    """The C compiler is missing or refused a source; the message says which."""


def cache_dir() -> Path:
    """Where compiled binaries live; created on demand."""
    path = Path(os.environ.get("SOCKSERVE_BENCH_CACHE", BENCH_DIR / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_compiler() -> str | None:
    """``$CC`` if set, else gcc, else cc; None when there is none."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return name
    return None


def compile_c(source_name: str) -> Path:
    """Compile ``bench/<source_name>`` (once per source and compiler) and return the binary."""
    compiler = find_compiler()
    if compiler is None:
        raise BuildError("no C compiler (gcc/cc, or $CC) on PATH")
    source = BENCH_DIR / source_name
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    key = hashlib.sha256(
        b"\0".join([source.read_bytes(), version.encode(), " ".join(CFLAGS + LDLIBS).encode()])
    ).hexdigest()[:16]
    binary = cache_dir() / f"{source.stem}-{key}"
    if binary.exists():
        return binary
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    argv = [compiler, *CFLAGS, "-o", str(partial), str(source), *LDLIBS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(argv)} failed:\n{done.stderr.strip()}")
    os.replace(partial, binary)
    return binary

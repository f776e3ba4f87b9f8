"""Run the test suite on every Python 3.11-3.13 this machine has, and on the default one.

Usage: ``python3 tools/test.py [pytest arguments]``

``--soak`` is a pytest option of this suite (``tests/conftest.py``): the fault battery
(``tests/reliability/``) at full size, with the RSS soak in every mode (tens of minutes).

The interpreter running this script uses its own environment (install the project into it
first: ``python3 -m pip install -e '.[dev]'``). Every other supported interpreter found on
PATH (``python3.11`` ...) or under pyenv gets a virtual environment in ``.venvs/`` with
the project and its test extras, made once and reused. A machine with only one Python runs
the suite once. Exit status is non-zero if any run failed.

tests/test_stats_page.py drives Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them; the test installs them itself when root with apt-get, else skips saying why).

The async mode has an optional compiled fast path (src/sockserve/aio/_fastpath.c, built
when the project is installed and a C compiler is there). With no pytest arguments (or
only ``--soak``), each interpreter also runs the async tests once more with it switched
off (``SOCKSERVE_PURE_PYTHON=1``), so both paths are checked everywhere.

Real components some tests drive: ``haproxy`` (tests/test_haproxy_interop.py,
tests/test_scale_out.py; Debian package ``haproxy``, installed by ``.ci/run``, or by the
test itself when it runs as root with apt-get; otherwise that test skips and prints why).
Debian packages some tests use (``.ci/run`` installs them where apt-get exists and they
are missing): ``systemd``, for ``systemd-analyze verify`` in test_deployment_docs.py.
tests/test_tls_serving.py runs ``curl`` and ``openssl s_client`` against the server; it
installs them with apt-get when it can (``.ci/run`` does it first), and skips otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED = ("3.11", "3.12", "3.13")
VENVS = ROOT / ".venvs"
#: The tests run a second time with the compiled fast path off.
PURE_PYTHON_TESTS = [
    "tests/test_aio.py",
    "tests/test_aio_inline.py",
    "tests/test_aio_fastpath.py",
    "tests/test_aio_both_paths.py",
    "tests/test_aio_bulk.py",
    "tests/test_tls_async_path.py",
]
#: What a venv is rebuilt for when it changes (the C file: its extension is built there).
INSTALL_INPUTS = ("pyproject.toml", "setup.py", "src/sockserve/aio/_fastpath.c")
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def main(pytest_args: list[str]) -> int:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    runs: list[tuple[str, list[str]]] = [(here, [sys.executable])]
    for version, python in find_other_interpreters(exclude=here):
        venv_python = ensure_venv(version, python)
        if venv_python is not None:
            runs.append((version, [str(venv_python)]))
    totals: dict[str, int] = {}
    failed_versions = []
    passes: list[tuple[str, list[str], dict[str, str]]] = [("", pytest_args, {})]
    if not [arg for arg in pytest_args if arg != "--soak"]:
        passes.append(
            (", compiled fast path off", PURE_PYTHON_TESTS, {"SOCKSERVE_PURE_PYTHON": "1"})
        )
    for version, python in runs:
        for label, args, extra_env in passes:
            print(f"\n===== Python {version}{label}: {python[0]} =====", flush=True)
            code, summary = run_pytest(python, args, extra_env)
            for count, kind in COUNT.findall(summary):
                key = "errors" if kind.startswith("error") else kind
                totals[key] = totals.get(key, 0) + int(count)
            if code != 0 and version not in failed_versions:
                failed_versions.append(version)
    print("\n===== summary =====")
    print("pythons: " + ", ".join(v for v, _ in runs))
    if failed_versions:
        print("failing on: " + ", ".join(failed_versions))
    print(
        f"total: {totals.get('passed', 0)} passed, "
        f"{totals.get('failed', 0) + totals.get('errors', 0)} failed, "
        f"{totals.get('skipped', 0)} skipped"
    )
    return 1 if failed_versions else 0


def find_other_interpreters(exclude: str) -> list[tuple[str, str]]:
    """One interpreter per supported minor version other than ``exclude``."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python{v}") for v in SUPPORTED]
    candidates += [str(p) for p in pyenv_pythons()]
    for candidate in candidates:
        if not candidate:
            continue
        version = interpreter_version(candidate)
        if version in SUPPORTED and version != exclude and version not in found:
            found[version] = candidate
    return sorted(found.items())


def pyenv_pythons() -> list[Path]:
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    versions = Path(root) / "versions"
    if not versions.is_dir():
        return []
    return sorted(versions.glob("3.1[1-3]*/bin/python3"), reverse=True)


def interpreter_version(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_venv(version: str, python: str) -> Path | None:
    """A venv for ``version`` with the project and test extras; None if it cannot be made."""
    venv = VENVS / f"py{version}"
    venv_python = venv / "bin" / "python"
    stamp = venv / ".sockserve-installed"
    wanted = hashlib.sha256(
        b"".join((ROOT / name).read_bytes() for name in INSTALL_INPUTS)
    ).hexdigest()
    if venv_python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return venv_python
    print(f"preparing {venv.relative_to(ROOT)} for Python {version} ...", flush=True)
    steps = [
        [python, "-m", "venv", "--clear", str(venv)],
        [str(venv_python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"],
    ]
    for step in steps:
        if subprocess.run(step, env=_clean_env()).returncode != 0:
            print(f"warning: could not prepare Python {version}; skipping it", flush=True)
            return None
    stamp.write_text(wanted)
    return venv_python


def run_pytest(python: list[str], args: list[str], extra_env: dict[str, str]) -> tuple[int, str]:
    """Run pytest, streaming its output; return its exit code and closing line."""
    proc = subprocess.Popen(
        [*python, "-m", "pytest", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_clean_env(), **extra_env},
    )
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.strip():
            last = line
    sys.stdout.flush()
    return proc.wait(), last


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYENV_VERSION", None)
    env.pop("PYTHONPATH", None)
    return env


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The oldest Python the package supports (``python_requires`` in setup.py) runs it: in a venv
of that Python holding only what ``pip install`` of the package brings (and pytest), as a user
installs it, every module imports and the core test files pass against the emulator, which
runs on the suite's own Python.

Why a venv of its own: under Python 3.9 botocore (the emulator's moto needs it) holds urllib3
below 2, whose API the gateway uses, so the emulator cannot be installed beside the gateway
there (``COSFTP_EMULATOR_PYTHON``, ``tests/emulator_proc.py``). Python 3.9 is not a Debian
package of this machine: the test looks for it on PATH and in pyenv's versions, and is
skipped, saying so, where there is none.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from typing import Optional

import pytest

# Its nested run of the core files takes minutes in two tests: first to a worker.
pytestmark = pytest.mark.long_file

OLDEST = "3.9"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-oldest")
# What a user's Python runs most: uploads, downloads and times through real clients, the
# configuration file, FTPS (about 1.5 min; with listings, the master's lifecycle and resume
# 4.5 min, which made this file the suite's longest).
CORE_FILES = ("test_files.py", "test_downloads.py", "test_mtimes.py", "test_config.py",
              "test_tls.py", "test_tls_data_ssl.py", "test_tls_sessions.py",
              "test_tls_config.py", "test_tls_reuse_basics.py", "test_tls_close_notify.py")
IMPORT_ALL = """
import importlib, pkgutil, cosftp_prefork
failed = []
for module in pkgutil.walk_packages(cosftp_prefork.__path__, "cosftp_prefork."):
    if module.name.endswith(".__main__") or ".emulator" in module.name:
        continue  # __main__ runs the command line; the emulator needs moto
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed.append(f"{module.name}: {exc!r}")
print("\\n".join(failed))
raise SystemExit(1 if failed else 0)
"""


def _runs(python: str) -> bool:
    """True if ``python`` is the oldest supported Python and starts (a pyenv shim of a
    version not selected fails)."""
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2], sep='.')"],
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == OLDEST


def _oldest_python() -> Optional[str]:
    """The oldest supported Python's interpreter on PATH or in pyenv's versions, or None."""
    name = f"python{OLDEST}"
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = [shutil.which(name), *sorted(glob.glob(os.path.join(
        pyenv, "versions", f"{OLDEST}.*", "bin", name)), reverse=True)]
    return next((path for path in found if path and _runs(path)), None)


def _venv(python: str) -> str:
    """The venv's interpreter, the venv made (or remade when setup.py changed) with the
    package installed editable, as ``pip install`` resolves its dependencies there."""
    with open(os.path.join(ROOT, "setup.py"), "rb") as setup:
        stamp = hashlib.sha256(setup.read() + python.encode()).hexdigest()
    stamp_file = os.path.join(VENV, ".installed")
    interpreter = os.path.join(VENV, "bin", "python")
    if os.path.exists(stamp_file):
        with open(stamp_file) as handle:
            if handle.read() == stamp:
                return interpreter
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python, "-m", "venv", VENV], check=True)
    done = subprocess.run([interpreter, "-m", "pip", "install", "-q", "-e", ROOT,
                           "pytest", "pytest-timeout"], capture_output=True, text=True)
    assert done.returncode == 0, f"pip install into {VENV} failed:\n{done.stderr[-3000:]}"
    with open(stamp_file, "w") as handle:
        handle.write(stamp)
    return interpreter


@pytest.fixture(scope="module")
def oldest() -> str:
    python = _oldest_python()
    if python is None:
        pytest.skip(f"no Python {OLDEST} on PATH or in pyenv's versions")
    return _venv(python)


def test_every_module_imports_on_the_oldest_python(oldest):
    done = subprocess.run([oldest, "-c", IMPORT_ALL], capture_output=True, text=True,
                          cwd="/")
    assert done.returncode == 0, f"modules that do not import:\n{done.stdout}{done.stderr}"


def test_the_core_test_files_pass_on_the_oldest_python(oldest):
    env = dict(os.environ, COSFTP_EMULATOR_PYTHON=sys.executable)
    files = [os.path.join("tests", name) for name in CORE_FILES]
    # In a process group of its own: if this test is cut short (its timeout), the nested
    # run's servers and emulators go with it (found: two masters left running after a
    # timeout, orphaned when only the nested pytest was killed).
    run = subprocess.Popen([oldest, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = run.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert run.returncode == 0, f"under {oldest}:\n{output[-8000:]}"

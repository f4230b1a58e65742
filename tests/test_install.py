"""Installing the package: ``pip install .`` gives a working ``cosftpctl`` that declares the
pyftpdlib range the tests run on; the old ``setup.py install`` is refused with what to run."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PathDistribution, version

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_copy(base) -> str:
    """The files a release tarball holds, outside the checkout (no build/ or egg-info)."""
    src = os.path.join(base, "src")
    shutil.copytree(os.path.join(ROOT, "cosftp_prefork"), os.path.join(src, "cosftp_prefork"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), src)
    return src


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """``pip install .`` of a copy of the source into a target directory; its path."""
    base = tmp_path_factory.mktemp("install")
    target = str(base / "site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", target, source_copy(base)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def test_pip_install_gives_a_working_cosftpctl(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": installed}
    where = subprocess.run([sys.executable, "-c", "import cosftp_prefork; "
                            "print(cosftp_prefork.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(installed), where  # the installed copy, not the checkout
    with open(os.path.join(ROOT, "conf", "vsftpd.conf.example"), encoding="utf-8") as handle:
        text = handle.read()
    example = tmp_path / "vsftpd.conf"  # with credentials: check refuses the placeholders
    example.write_text(text.replace("= XXXXXX", "= filled-in"))
    check = subprocess.run([os.path.join(installed, "bin", "cosftpctl"), "-c", example, "check"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert ": OK, " in check.stdout


def test_pyftpdlib_requirement_is_the_tested_range(installed):
    dist_info, = pathlib.Path(installed).glob("cosftp_prefork-*.dist-info")
    requires = [Requirement(line) for line in PathDistribution(dist_info).requires or []]
    pyftpdlib, = (r.specifier for r in requires if r.name == "pyftpdlib")
    assert pyftpdlib.contains(version("pyftpdlib"))
    # 2.0 and 2.1 lack pyftpdlib.exceptions and pyftpdlib.handlers.ftp, which ftp.py imports.
    assert not pyftpdlib.contains("2.1.0") and not pyftpdlib.contains("2.0.1")
    assert not pyftpdlib.contains("3.0.0")


CONSOLE_FILES = ("index.html", "console.js", "console.css")


def test_the_wheel_carries_the_admin_console(tmp_path, installed):
    """The console is package data: in the wheel, and served by an installed copy."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "dist"), source_copy(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel, = (tmp_path / "dist").glob("cosftp_prefork-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [f"cosftp_prefork/admin/console/{name}" in names for name in CONSOLE_FILES] == \
        [True] * len(CONSOLE_FILES), names
    served = subprocess.run(
        [sys.executable, "-c", "from cosftp_prefork.admin.process import public_files; "
         "print(*sorted((p, len(f().body)) for p, f in public_files().items()))"],
        env={**os.environ, "PYTHONPATH": installed}, cwd=tmp_path, capture_output=True,
        text=True, timeout=60)
    assert served.returncode == 0, served.stderr
    for path in ("'/'", "'/console.js'", "'/console.css'", "'/api/v1/openapi.json'"):
        assert path in served.stdout


def test_setup_py_install_is_refused_with_what_to_run(tmp_path):
    src = source_copy(tmp_path)
    prefix = tmp_path / "prefix"
    done = subprocess.run([sys.executable, "setup.py", "install", "--prefix", str(prefix)],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "run 'pip install .'" in done.stderr
    assert not prefix.exists() and not os.path.exists(os.path.join(src, "build"))


@pytest.mark.timeout(900)
def test_first_bootstrap_shows_build_errors_but_not_setuptools_editable_notice(tmp_path):
    """What the first ``scripts/demo`` prints while ``scripts/bootstrap`` creates the venv:
    a build error in full, and after a good build no setuptools "Editable installation"
    notice (the flat layout's cosftp_prefork/ in the working directory *is* the package)."""
    src = source_copy(tmp_path)
    os.mkdir(os.path.join(src, "scripts"))
    shutil.copy(os.path.join(ROOT, "scripts", "bootstrap"), os.path.join(src, "scripts"))
    setup_py = pathlib.Path(src, "setup.py")
    good = setup_py.read_text()
    env = {**os.environ, "PIP_NO_DEPS": "1"}  # the build is what is looked at, not the deps

    def bootstrap() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", os.path.join(src, "scripts", "bootstrap")], env=env,
                              capture_output=True, text=True, timeout=400)

    setup_py.write_text('raise ValueError("broken on purpose")\n')
    broken = bootstrap()
    assert broken.returncode != 0 and "ValueError: broken on purpose" in broken.stderr
    setup_py.write_text(good)
    done = bootstrap()
    assert done.returncode == 0, done.stderr
    assert "Editable installation" not in done.stdout + done.stderr, done.stderr
    where = subprocess.run([os.path.join(src, ".venv", "bin", "python"), "-c",
                            "import cosftp_prefork; print(cosftp_prefork.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == os.path.join(src, "cosftp_prefork", "__init__.py"), where

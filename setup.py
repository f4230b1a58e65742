from setuptools import find_packages, setup

setup(
    name="cosftp-prefork",
    version="0.1.0",
    description="Prefork FTP server that serves Tencent Cloud COS buckets",
    packages=find_packages(include=["cosftp_prefork", "cosftp_prefork.*"]),
    python_requires=">=3.9",
    install_requires=[
        "pyftpdlib>=2.0",
        "cos-python-sdk-v5>=1.9.30",
        "psutil>=5.9",
        "setproctitle>=1.3",
        "fastcrc>=0.3",
        # FTPS: pyftpdlib defines TLS_FTPHandler only when pyOpenSSL imports; 24.3 takes
        # cryptography's certificate and key objects, which tls.py loads for clear errors.
        "pyOpenSSL>=24.3",
        "cryptography>=42",
    ],
    extras_require={
        # The local COS emulator used by the demo and the test suite.
        "emulator": ["moto[server]>=5.0"],
        "test": ["moto[server]>=5.0", "pytest>=7", "pytest-timeout>=2", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["cosftpctl=cosftp_prefork.cli:main"]},
)

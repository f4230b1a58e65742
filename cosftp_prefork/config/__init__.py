"""Settings table, INI parsing and validation into frozen dataclasses; password hashes and TLS
material checked here (no OpenSSL, no network).
"""

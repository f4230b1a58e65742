"""Processes: cosftpctl, the master and its workers, the scoreboard they share, connection
governance, cluster state, metrics exporter, log set-up. Imports ftp/ and cos/ only in the
worker, after fork.
"""

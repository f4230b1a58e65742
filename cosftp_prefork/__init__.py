"""cosftp-prefork: a prefork FTP server that serves Tencent Cloud COS buckets."""

__version__ = "0.1.0"

"""``python -m cosftp_prefork``: the same as ``cosftpctl``."""

import sys

from .server.cli import main

sys.exit(main())

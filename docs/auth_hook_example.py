"""An auth hook for cosftp-prefork: `python3 auth_hook_example.py 8081`, then
`[OPTIONAL] auth_hook_url = http://127.0.0.1:8081/`. Replace USERS with your directory."""

import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# user -> (sha256 of the password, the account: the options of a [COS_ACCOUNT_N] section)
USERS = {"alice": (hashlib.sha256(b"alice-pw").hexdigest(),
                   {"cos_bucket": "examplebucket-1250000000", "cos_region": "ap-guangzhou",
                    "cos_credentials": "shared", "authority": "RW"})}


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        digest, account = USERS.get(asked["user"], ("", None))
        given = hashlib.sha256(asked["password"].encode()).hexdigest()
        ok = account is not None and hmac.compare_digest(given, digest)
        body = json.dumps({"allow": True, "account": account} if ok else {"allow": False})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()

"""Container health check: exit 0 when the server on $BENTOML_PORT answers /readyz with 200."""

import os
import sys
import urllib.request

port = os.environ.get("BENTOML_PORT", "3000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:
    print(f"/readyz on port {port}: {err}", file=sys.stderr)
    sys.exit(1)

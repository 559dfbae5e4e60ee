"""Container health check: exit 0 when the server answers /readyz with 200 on its port: $PORT where set (BentoML's
entrypoint then serves there), else $BENTOML_PORT."""

import os
import sys
import urllib.request

port = os.environ.get("PORT") or os.environ.get("BENTOML_PORT", "3000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as err:
    print(f"/readyz on port {port}: {err}", file=sys.stderr)
    sys.exit(1)

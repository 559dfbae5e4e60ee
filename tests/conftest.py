"""Test setup: a private BentoML store, so tests never touch the user's models."""

import os
import tempfile

# Must happen before bentoml is imported anywhere: BentoML reads BENTOML_HOME once.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="seqserve-test-bentoml-")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

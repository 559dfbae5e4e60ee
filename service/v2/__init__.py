"""The Open Inference Protocol (KServe "v2", Triton's REST API) for seqserve's models.

``tensors`` reads and writes one tensor in either encoding (JSON data or the binary tensor data
extension); ``protocol`` knows the inputs and outputs of a seqserve classifier or forecaster, decodes
an infer request into arrays and encodes the answer; ``routes`` serves them over HTTP. The first two
hold no server and are tested with the official client's own encoders (tests/test_open_inference.py).
"""

# The binary tensor data extension's header: the JSON part's length, the binary tensors following it. Here, not
# in ``protocol``, so the guard and the connection reader (which size a body's cap by it) need no numpy.
# Lowercase, as ASGI gives header names.
HEADER_LENGTH = "inference-header-content-length"

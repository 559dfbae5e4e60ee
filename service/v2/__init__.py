"""The Open Inference Protocol (KServe "v2", Triton's REST API) for seqserve's models.

``tensors`` reads and writes one tensor in either encoding (JSON data or the binary tensor data
extension); ``protocol`` knows the inputs and outputs of a seqserve classifier or forecaster, decodes
an infer request into arrays and encodes the answer; ``routes`` serves them over HTTP. The first two
hold no server and are tested with the official client's own encoders (tests/test_open_inference.py).
"""

"""The CUDA path: models load onto the GPU and answer like on the CPU. Skipped cleanly without a GPU."""

import numpy as np
import pytest
import torch

from models.artifact import load_artifact
from models.device import resolve_device
from tests import tiny_models
from tests.service_client import served_answers

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_auto_is_cpu_without_a_gpu_and_cuda_is_refused_clearly():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


@needs_gpu
def test_batched_inference_on_the_gpu_matches_the_cpu():
    clf, fc = tiny_models.store_classifier("gpu-clf"), tiny_models.store_forecaster("gpu-fc")
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (3, 40, 17, 1)]
    cpu, gpu = load_artifact(clf, "cpu"), load_artifact(clf, "cuda")
    assert next(gpu.module.parameters()).is_cuda
    for a, b in zip(served_answers(cpu, seqs), served_answers(gpu, seqs)):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
    histories = [rng.normal(size=(12, 1)).astype(np.float32) * 100 for _ in range(8)]
    for a, b in zip(served_answers(load_artifact(fc, "cpu"), histories), served_answers(load_artifact(fc, "cuda"), histories)):
        np.testing.assert_allclose(a["forecast"], b["forecast"], rtol=1e-3, atol=1e-2)


@needs_gpu
def test_a_stream_on_the_gpu_equals_the_whole_sequence_on_the_gpu():
    """Serving turns cuDNN's TF32 off (service.lanes): the stream's float32 cells and the whole-sequence
    cuDNN pass agree as closely as on the CPU."""
    from service.config import Settings
    from service.lanes import load_lanes

    tag = tiny_models.store_streaming_classifier("gpu-stream", "gru", 2)
    lane = load_lanes(Settings.from_env(), [tag]).get(tag)
    assert lane.model.device.type == "cuda" and not torch.backends.cudnn.allow_tf32
    model, stream = lane.model, lane.stream
    sequence = np.random.default_rng(1).normal(size=(37, 3)).astype(np.float32)
    [advanced] = stream.advance([stream.initial()], [sequence], every_step=[True])
    for n, logits in advanced.outputs:
        with torch.inference_mode():
            whole = model.module(torch.from_numpy(sequence[:n])[None].cuda(), torch.tensor([n]))[0].float().cpu().numpy()
        np.testing.assert_allclose(logits, whole, atol=1e-5, rtol=0)

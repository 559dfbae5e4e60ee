"""A plain BentoML adaptive-batching service, as the BentoML docs show it: the baseline to beat.

    BENCH_MODEL=name:version bentoml serve loadtests.baselines.plain_bentoml:PlainBatchable
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import torch
from pydantic import BaseModel

from models.artifact import load_artifact
from models.padding import pad_sequences


class Instance(BaseModel):
    sequence: list[list[float]]


@bentoml.service(workers=1, envs=[{"name": "OMP_NUM_THREADS", "value": "1"}])
class PlainBatchable:
    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.model = load_artifact(os.environ["BENCH_MODEL"])

    @bentoml.api(route="/classify", batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=1000)
    def classify(self, instances: list[Instance]) -> list[dict]:
        x, lengths = pad_sequences([np.asarray(i.sequence, dtype=np.float32) for i in instances])
        with torch.inference_mode():
            probabilities = torch.softmax(self.model.module(x, lengths), dim=-1).numpy()
        labels = self.model.card.labels
        return [{"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist()))} for p in probabilities]

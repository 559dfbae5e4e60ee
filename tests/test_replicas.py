"""Streams across replicas: two `bentoml serve` processes with one SEQSERVE_STATE_KEY carry one token stream
between them, and a server with another key refuses its token."""

from contextlib import ExitStack

import httpx
import numpy as np

from loadtests.server import running_server
from tests import tiny_models

KEY = "replicas-share-this-key-0123456789"
OTHER_KEY = "another-deployment-key-9876543210"
CHUNKS = (3, 1, 4, 2)  # steps sent with each request, to the replicas in turn


def test_a_token_stream_moves_between_two_replicas_and_another_key_refuses_it():
    tag = tiny_models.store_streaming_classifier("replicas")
    env = {"SEQSERVE_MODELS": tag, "SEQSERVE_STATE_KEY": KEY}
    sequence = np.random.default_rng(7).normal(size=(sum(CHUNKS), 3)).round(4).tolist()
    with ExitStack() as servers:
        replicas = [servers.enter_context(running_server(env)) for _ in range(2)]
        other = servers.enter_context(running_server({**env, "SEQSERVE_STATE_KEY": OTHER_KEY}))

        state, start = None, 0
        for i, size in enumerate(CHUNKS):
            url = replicas[i % 2]
            body = {"instances": [{"steps": sequence[start:start + size], "state": state, "model": tag}]}
            response = httpx.post(f"{url}/stream/classify", json=body, timeout=30)
            assert response.status_code == 200, response.text
            answer = response.json()[0]
            start, state = start + size, answer["state"]
            assert answer["seen"] == start

        whole = httpx.post(f"{replicas[0]}/classify", json={"instances": [{"sequence": sequence, "model": tag}]}, timeout=30)
        assert whole.status_code == 200, whole.text
        expected = whole.json()[0]
        assert (answer["label"], answer["label_index"]) == (expected["label"], expected["label_index"])
        np.testing.assert_allclose(list(answer["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-5)

        body = {"instances": [{"steps": sequence[:1], "state": state, "model": tag}]}
        refused = httpx.post(f"{other}/stream/classify", json=body, timeout=30)
        assert refused.status_code == 400
        assert refused.json() == {"error": "instances[0].state: signature does not match: the token was altered, "
                                           "or signed with another SEQSERVE_STATE_KEY"}

"""The stored format: round trip, a new version per save, and clear refusals of damaged models."""

import json
from pathlib import Path

import bentoml
import pytest
import torch

from models import create_model
from models.artifact import (CARD_FILE, WEIGHTS_FILE, ArtifactError, ModelCard, check_name, list_artifacts, load_artifact,
                             save_artifact)

HPARAMS = {"n_features": 2, "n_classes": 3, "hidden_size": 8}


def store_classifier(name: str = "clf") -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("gru_classifier", **HPARAMS).eval()
    card = ModelCard(
        task="classify", model_name="gru_classifier", hparams=HPARAMS, features=["a", "b"], labels=["x", "y", "z"],
        metrics={"test": {"accuracy": 0.9}, "baselines": {"majority_class": {"accuracy": 0.4}}},
    )
    return save_artifact(name, model, card), model


def folder(tag: str) -> Path:
    return Path(bentoml.models.get(tag).path)


def test_round_trip_gives_the_same_outputs():
    tag, model = store_classifier()
    loaded = load_artifact(tag)
    x = torch.randn(4, 10, 2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x), atol=0, rtol=0)
    assert loaded.tag == tag
    assert loaded.card.labels == ["x", "y", "z"]
    assert loaded.card.arch == "gru"
    assert loaded.card.versions["torch"] == torch.__version__
    assert not loaded.module.training


def test_every_save_is_a_new_version_and_nothing_is_overwritten():
    first, _ = store_classifier("versions")
    second, _ = store_classifier("versions")
    assert first != second
    assert {info.tag for info in list_artifacts()} >= {first, second}
    assert load_artifact("versions:latest").tag == second
    assert load_artifact(first).tag == first


GOOD_NAMES = ["a", "9", "gunpoint-gru", "co2.v2_lstm", "a..b", "x" * 63]
BAD_NAMES = ["", "Bad Name", "Caps", "a/b", "../x", "a\\b", ".", "..", "-a", "a-", "a.", "_a", "a b", "é", "x" * 64]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_valid_name_is_a_bentoml_tag_as_it_is(name):
    assert check_name(name) == name
    assert str(bentoml.Tag(name)) == name


@pytest.mark.parametrize("name", [*BAD_NAMES, "a\n"])
def test_an_invalid_name_is_refused_with_the_rule(name):
    with pytest.raises(ValueError) as refused:
        check_name(name)
    assert str(refused.value) == (f"invalid model name {name!r}: a name is 1 to 63 lowercase letters, digits, "
                                  "'_', '-' or '.', starting and ending with a letter or digit")


@pytest.mark.parametrize("name", BAD_NAMES)  # not "a\n": BentoML's pattern ends in $, which matches before a final newline
def test_bentoml_refuses_or_renames_what_check_name_refuses(name):
    try:
        assert str(bentoml.Tag(name)) != name  # capitals: BentoML lowercases them
    except ValueError:
        pass  # refused


def test_saving_under_an_invalid_name_stores_nothing():
    before = {info.tag for info in list_artifacts()}
    with pytest.raises(ValueError, match="invalid model name 'Bad Name'"):
        store_classifier("Bad Name")
    assert {info.tag for info in list_artifacts()} == before


def test_weights_are_plain_tensors_loadable_with_weights_only():
    tag, _ = store_classifier()
    state = torch.load(folder(tag) / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    card = json.loads((folder(tag) / CARD_FILE).read_text())
    assert card["schema_version"] == 1 and card["task"] == "classify"


def test_a_stored_version_is_as_readable_as_its_files():
    # A store written on the host is read in a container by its non-root user (container/README.md).
    tag, _ = store_classifier()
    files = {(path.stat().st_mode & 0o444) for path in folder(tag).iterdir()}
    assert len(files) == 1
    read = files.pop()
    assert folder(tag).stat().st_mode & 0o555 == read | read >> 2


def test_unknown_model_names_the_ones_that_exist():
    store_classifier("known")
    with pytest.raises(ArtifactError, match=r"no model 'missing:latest'.*known:"):
        load_artifact("missing:latest")


def edit_card(tag: str, **changes) -> None:
    path = folder(tag) / CARD_FILE
    card = json.loads(path.read_text())
    card.update(changes)
    path.write_text(json.dumps(card))


def test_unknown_schema_version_is_refused():
    tag, _ = store_classifier()
    edit_card(tag, schema_version=99)
    with pytest.raises(ArtifactError, match=r"unknown schema_version 99; this seqserve reads \[1\]"):
        load_artifact(tag)


def test_missing_weights_are_refused():
    tag, _ = store_classifier()
    (folder(tag) / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match="weights file weights.pt is missing"):
        load_artifact(tag)


def test_corrupt_weights_are_refused():
    tag, _ = store_classifier()
    path = folder(tag) / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="weights are corrupt"):
        load_artifact(tag)


def test_unreadable_weights_are_refused_even_without_a_checksum():
    tag, _ = store_classifier()
    edit_card(tag, weights_sha256="")
    (folder(tag) / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="weights cannot be read"):
        load_artifact(tag)


def test_metadata_that_does_not_match_the_weights_is_refused():
    tag, _ = store_classifier()
    edit_card(tag, hparams={**HPARAMS, "hidden_size": 16})
    with pytest.raises(ArtifactError, match="metadata does not match the weights"):
        load_artifact(tag)


def test_a_card_naming_an_unknown_model_is_refused():
    tag, _ = store_classifier()
    edit_card(tag, model_name="transformer_classifier")
    with pytest.raises(ArtifactError, match="cannot rebuild 'transformer_classifier'"):
        load_artifact(tag)


def test_a_bentoml_model_that_is_not_ours_is_refused():
    with bentoml.models.create("foreign") as stored:
        (Path(stored.path) / "model.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="is not a seqserve model"):
        load_artifact("foreign:latest")
    assert all(not info.tag.startswith("foreign:") for info in list_artifacts())

"""Network definitions, the model registry and the stored-model format (``models.artifact``)."""

from functools import partial

from models.ensemble import ClassifierEnsemble
from models.neighbours import DTWNearestNeighbour, NeighbourConfig
from models.recurrent import CELLS, ClassifierConfig, Forecaster, ForecasterConfig, RecurrentEncoder, SequenceClassifier
from models.registry import create_model, list_models, register_model

for _cell in CELLS:
    register_model(f"{_cell}_classifier", partial(SequenceClassifier, cell=_cell))
    register_model(f"{_cell}_ensemble", partial(ClassifierEnsemble, cell=_cell))
    register_model(f"{_cell}_forecaster", partial(Forecaster, cell=_cell))
register_model("dtw_1nn", DTWNearestNeighbour)

__all__ = [
    "CELLS", "ClassifierConfig", "ClassifierEnsemble", "DTWNearestNeighbour", "Forecaster", "ForecasterConfig",
    "NeighbourConfig", "RecurrentEncoder", "SequenceClassifier", "create_model", "list_models",
]

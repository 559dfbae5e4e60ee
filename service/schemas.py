"""The HTTP edge: request and response bodies as pydantic models.

Every field carries a description and an example, so the OpenAPI page documents the API by itself.
Only shape and type are checked here (pydantic answers 400 with the failing location); checks that
need the model (feature count, history length) live in ``service.inference``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

# Plain JSON has no NaN or Infinity; refusing them here names the exact step and feature. Values must be
# JSON numbers: StrictFloat refuses true/false and numeric strings instead of quietly turning them into 1.0.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

MODEL_FIELD = Field(
    default=None,
    description="Model to use: a name (its newest served version) or name:version. Default: the default model for the endpoint.",
    examples=["japanesevowels-gru"],
)


class ClassifyInstance(BaseModel):
    """One sequence to classify."""

    model_config = _STRICT
    sequence: list[list[StrictFloat]] = Field(
        description="The sequence, one list of feature values per time step: shape (steps, features). "
        "Sequences in one request may have different lengths.",
        examples=[[[0.1, -0.4, 1.2], [0.3, -0.2, 0.9], [0.5, 0.0, 0.7]]],
    )
    model: str | None = MODEL_FIELD


class ForecastInstance(BaseModel):
    """One history to forecast from."""

    model_config = _STRICT
    history: list[list[StrictFloat]] | list[StrictFloat] = Field(
        description="Past values, oldest first: a flat list for a single-channel model, or one list per step "
        "(targets first, then covariates). At least the model's lookback; only the last lookback steps are used.",
        examples=[[315.2, 315.9, 316.4, 317.1, 317.8, 318.2]],
    )
    model: str | None = MODEL_FIELD


class ClassifyResult(BaseModel):
    """The answer for one sequence."""

    model: str = Field(description="The model that answered, as name:version.", examples=["japanesevowels-gru:2x3kd7hf"])
    label: str = Field(description="The most probable class.", examples=["3"])
    label_index: int = Field(description="Position of the label in the model's label list.", examples=[2])
    probabilities: dict[str, float] = Field(
        description="Probability of every class; they sum to 1.", examples=[{"1": 0.01, "2": 0.02, "3": 0.97}]
    )


class ForecastResult(BaseModel):
    """The forecast for one history, in that history's own scale."""

    model: str = Field(description="The model that answered, as name:version.", examples=["co2-gru:q6m2dyhf"])
    horizon: int = Field(description="Number of steps forecast.", examples=[3])
    forecast: list[float] | list[list[float]] = Field(
        description="Point forecast (the median when the model has quantiles): one value per step, "
        "or one list per step for a multi-target model.",
        examples=[[318.6, 319.0, 319.3]],
    )
    quantiles: dict[str, list[float] | list[list[float]]] | None = Field(
        default=None,
        description="For quantile models: the forecast at each quantile level, never crossing.",
        examples=[{"0.1": [318.1, 318.4, 318.6], "0.5": [318.6, 319.0, 319.3], "0.9": [319.1, 319.6, 320.0]}],
    )


class ModelInfo(BaseModel):
    """A served model."""

    tag: str = Field(description="name:version", examples=["japanesevowels-gru:2x3kd7hf"])
    task: str = Field(description="classify or forecast", examples=["classify"])
    default: bool = Field(description="Whether requests without a model go to this one.", examples=[True])
    architecture: dict = Field(
        description="Registry name and hyper-parameters.",
        examples=[{"model_name": "gru_classifier", "cell": "gru", "hidden_size": 64, "num_layers": 2}],
    )
    features: list[str] = Field(description="Input channels, in order.", examples=[["coef_0", "coef_1"]])
    labels: list[str] = Field(default_factory=list, description="Class names (classifiers).", examples=[["1", "2"]])
    lookback: int | None = Field(default=None, description="History steps read (forecasters).", examples=[52])
    horizon: int | None = Field(default=None, description="Steps forecast (forecasters).", examples=[12])
    quantiles: list[float] = Field(default_factory=list, description="Quantile levels (forecasters).", examples=[[0.1, 0.5, 0.9]])
    max_length: int = Field(description="Longest sequence or history accepted.", examples=[4096])
    train_max_length: int | None = Field(
        default=None, description="Longest sequence seen in training (classifiers).", examples=[29]
    )
    metrics: dict = Field(description="Test metrics and baselines from training.", examples=[{"test": {"accuracy": 0.97}}])
    created: str = Field(description="When the model was trained (UTC).", examples=["2026-11-21T06:00:00+00:00"])
    device: str = Field(description="Where the model runs.", examples=["cpu"])

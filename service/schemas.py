"""The HTTP edge: request and response bodies as pydantic models.

Every field carries a description and an example, so the OpenAPI page documents the API by itself,
and the examples are requests the default models answer (``make serve``). Only shape and type are
checked here; checks that need the model (feature count, history length) live in ``service.inputs``.
Lists validate *fail fast*: a body full of bad values costs one error, not one per value.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat

from service.framework import IORootModel  # what BentoML builds itself for a list return type

# Plain JSON has no NaN or Infinity; refusing them here names the exact step and feature. Values must be
# JSON numbers: StrictFloat refuses true/false and numeric strings instead of quietly turning them into 1.0.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

# One time step: the values of every feature (or, in a flat history, just a number).
Step = Annotated[list[StrictFloat], Field(fail_fast=True)]

# Examples the default models answer: italypower-gru (1 feature, 24 hourly steps) and co2-gru (weekly).
EXAMPLE_SEQUENCE = [[-0.71], [-0.93], [-1.02], [-1.09], [-1.1], [-0.94], [-0.31], [0.41], [0.89], [0.83], [0.87], [0.89], [0.77], [0.67], [0.61], [0.71], [0.93], [1.21], [1.38], [1.34], [0.91], [0.18], [-0.41], [-0.61]]
EXAMPLE_HISTORY = [315.0, 315.39, 315.78, 316.15, 316.51, 316.85, 317.17, 317.46, 317.71, 317.93, 318.11, 318.24, 318.34, 318.39, 318.4, 318.36, 318.29, 318.17, 318.01, 317.82, 317.59, 317.33, 317.05, 316.75, 316.44, 316.11, 315.78, 315.45, 315.12, 314.81, 314.51, 314.23, 313.97, 313.74, 313.55, 313.39, 313.27, 313.2, 313.16, 313.17, 313.22, 313.32, 313.45, 313.63, 313.85, 314.1, 314.39, 314.71, 315.05, 315.41, 315.78, 316.17, 316.56, 316.95, 317.34, 317.71, 318.07, 318.41, 318.73, 319.02, 319.27, 319.49, 319.67, 319.8, 319.9, 319.95, 319.96, 319.92, 319.85, 319.73, 319.57, 319.38, 319.15, 318.89, 318.61, 318.31, 318.0, 317.67, 317.34, 317.01, 316.68, 316.37, 316.07, 315.79, 315.53, 315.3, 315.11, 314.95, 314.83, 314.76, 314.72, 314.73, 314.78, 314.88, 315.01, 315.19, 315.41, 315.66, 315.95, 316.27, 316.61, 316.97, 317.34, 317.73, 318.12, 318.51, 318.9, 319.27, 319.63, 319.97, 320.29, 320.58, 320.83, 321.05, 321.23, 321.36, 321.46, 321.51, 321.52, 321.48, 321.41, 321.29, 321.13, 320.94, 320.71, 320.45, 320.17, 319.87, 319.56, 319.23, 318.9, 318.57, 318.24, 317.93, 317.63, 317.35, 317.09, 316.86, 316.67, 316.51, 316.39, 316.32, 316.28, 316.29, 316.34, 316.44, 316.57, 316.75, 316.97, 317.22, 317.51, 317.83, 318.17, 318.53, 318.9, 319.29]

MODEL_FIELD = Field(
    default=None,
    max_length=256,
    description="Model to use: a name (its newest served version) or name:version. Default: the default model for the endpoint.",
    examples=["italypower-gru"],
)


class ClassifyInstance(BaseModel):
    """One sequence to classify."""

    model_config = _STRICT
    sequence: list[Step] = Field(
        fail_fast=True,
        description="The sequence, one list of feature values per time step: shape (steps, features). "
        "Sequences in one request may have different lengths.",
        examples=[EXAMPLE_SEQUENCE],
    )
    model: str | None = MODEL_FIELD


class ForecastInstance(BaseModel):
    """One history to forecast from."""

    model_config = _STRICT
    # A list whose items are numbers or lists (not "a list of lists, or a list of numbers"): one schema
    # that BentoML's Python client encodes both ways, and errors that point at the step.
    history: list[StrictFloat | Step] = Field(
        fail_fast=True,
        description="Past values, oldest first: a flat list of numbers for a single-channel model, or one list per "
        "step (targets first, then covariates). At least the model's lookback; only the last lookback steps are used.",
        examples=[EXAMPLE_HISTORY],
    )
    model: str | None = Field(
        default=None, max_length=256, description=MODEL_FIELD.description, examples=["co2-gru"]
    )


REQUEST_MODEL_DESCRIPTION = ("Model for every instance that names none (checked even where all do): a name (its newest "
                             "served version) or name:version. Default: the default model for the endpoint.")
CLASSIFY_REQUEST_MODEL = Field(default=None, max_length=256, description=REQUEST_MODEL_DESCRIPTION, examples=["italypower-gru"])
FORECAST_REQUEST_MODEL = Field(default=None, max_length=256, description=REQUEST_MODEL_DESCRIPTION, examples=["co2-gru"])
CLASSIFY_INSTANCES = Field(
    fail_fast=True,
    description="The sequences to classify, answered in order. Instances may name different models and have different lengths.",
    examples=[[{"sequence": EXAMPLE_SEQUENCE, "model": "italypower-gru"}]],
)
FORECAST_INSTANCES = Field(
    fail_fast=True,
    description="The histories to forecast from, answered in order. Instances may name different models.",
    examples=[[{"history": EXAMPLE_HISTORY, "model": "co2-gru"}]],
)


STATE_FIELD = Field(
    default=None,
    description="The state token from this stream's previous answer; leave it out (or null) to start a new stream. "
    "Opaque to clients: signed, bound to the model version that made it, not encrypted (see the README).",
    examples=[None],
)
EVERY_STEP_FIELD = Field(
    default=False, description="Also answer after every new step (per_step), not only after the last.", examples=[False]
)


class StreamClassifyInstance(BaseModel):
    """New steps of one classification stream."""

    model_config = _STRICT
    steps: list[Step] = Field(
        fail_fast=True,
        description="The stream's new steps only, one list of feature values per step, oldest first.",
        examples=[EXAMPLE_SEQUENCE[:3]],
    )
    state: str | None = STATE_FIELD
    model: str | None = MODEL_FIELD
    every_step: StrictBool = EVERY_STEP_FIELD


class StreamForecastInstance(BaseModel):
    """New steps of one forecasting stream."""

    model_config = _STRICT
    steps: list[StrictFloat | Step] = Field(
        fail_fast=True,
        description="The stream's new values only, oldest first: numbers for a single-channel model, else one list per step.",
        examples=[EXAMPLE_HISTORY[:3]],
    )
    state: str | None = STATE_FIELD
    model: str | None = Field(default=None, max_length=256, description=MODEL_FIELD.description, examples=["co2-gru"])
    every_step: StrictBool = EVERY_STEP_FIELD


class StreamMessage(BaseModel):
    """One message on a /stream WebSocket: the stream's new steps."""

    model_config = _STRICT
    steps: list[StrictFloat | Step] = Field(
        fail_fast=True, description="New steps, oldest first: one list of feature values per step (or numbers, one feature)."
    )
    every_step: StrictBool = EVERY_STEP_FIELD


STREAM_CLASSIFY_INSTANCES = Field(
    fail_fast=True,
    description="New steps of one or more streams, answered in order. Each carries its own state token (none for a new stream).",
    examples=[[{"steps": EXAMPLE_SEQUENCE[:3], "model": "italypower-gru"}]],
)
STREAM_FORECAST_INSTANCES = Field(
    fail_fast=True,
    description="New values of one or more streams, answered in order. Each carries its own state token (none for a new stream).",
    examples=[[{"steps": EXAMPLE_HISTORY, "model": "co2-gru"}]],
)


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


SEEN_FIELD = Field(description="Steps this stream has read so far, these included.", examples=[27])
STATE_OUT_FIELD = Field(description="The token to send with this stream's next steps.", examples=["AQx8…"])


class ClassifyStepResult(ClassifyResult):
    """The answer after one step of a classification stream."""

    seen: int = SEEN_FIELD


class StreamClassifyResult(ClassifyStepResult):
    """A classification stream after its new steps: /classify's answer on the whole sequence so far."""

    state: str = STATE_OUT_FIELD
    per_step: list[ClassifyStepResult] | None = Field(default=None, description="With every_step: the answer after each new step.")


class ForecastStepResult(ForecastResult):
    """The forecast after one step of a forecasting stream: null until the stream has the model's lookback."""

    forecast: list[float] | list[list[float]] | None = Field(
        description="Point forecast, as /forecast gives it; null until the stream has the model's lookback.",
        examples=[[318.6, 319.0, 319.3]],
    )
    seen: int = SEEN_FIELD
    steps_needed: int | None = Field(default=None, description="Until the stream has lookback steps: how many more it needs.", examples=[None])


class StreamForecastResult(ForecastStepResult):
    """A forecasting stream after its new steps: /forecast's answer on the history so far."""

    state: str = STATE_OUT_FIELD
    per_step: list[ForecastStepResult] | None = Field(default=None, description="With every_step: the forecast after each new step.")


class StreamClassifyAnswers(IORootModel[list[StreamClassifyResult]]):
    """What /stream/classify returns: one answer and next state per instance, in order."""


class StreamForecastAnswers(IORootModel[list[StreamForecastResult]]):
    """What /stream/forecast returns: one forecast and next state per instance, in order."""


class ClassifyAnswers(IORootModel[list[ClassifyResult]]):
    """What /classify returns: one answer per instance, in order."""


class ForecastAnswers(IORootModel[list[ForecastResult]]):
    """What /forecast returns: one forecast per instance, in order."""


class ModelInfo(BaseModel):
    """A served model."""

    tag: str = Field(description="name:version", examples=["japanesevowels-gru:2x3kd7hf"])
    task: str = Field(description="classify or forecast", examples=["classify"])
    default: bool = Field(description="Whether requests without a model go to this one.", examples=[True])
    name_default: bool = Field(
        description="Whether requests that give only the model's name (no version) go to this version: the name's "
        "newest version once it has loaded (other versions stay reachable as name:version while loaded).", examples=[True],
    )
    architecture: dict = Field(
        description="Registry name and hyper-parameters.",
        examples=[{"model_name": "gru_classifier", "cell": "gru", "hidden_size": 64, "num_layers": 2}],
    )
    features: list[str] = Field(description="Input channels, in order.", examples=[["coef_0", "coef_1"]])
    targets: list[str] = Field(
        default_factory=list, description="The features forecast, the first of ``features`` (forecasters; the rest are "
        "covariates, read but not forecast).", examples=[["co2"]],
    )
    labels: list[str] = Field(default_factory=list, description="Class names (classifiers).", examples=[["1", "2"]])
    lookback: int | None = Field(default=None, description="History steps read (forecasters).", examples=[52])
    horizon: int | None = Field(default=None, description="Steps forecast (forecasters).", examples=[12])
    quantiles: list[float] = Field(default_factory=list, description="Quantile levels (forecasters).", examples=[[0.1, 0.5, 0.9]])
    max_length: int = Field(description="Longest sequence or history accepted.", examples=[4096])
    train_max_length: int | None = Field(
        default=None, description="Longest sequence seen in training (classifiers).", examples=[29]
    )
    metrics: dict = Field(description="Test metrics and baselines from training.", examples=[{"test": {"accuracy": 0.97}}])
    warnings: list[str] = Field(
        default_factory=list,
        description="What training found wrong with the model, e.g. that it did not beat its simplest baseline. "
        "Empty when nothing was found; such a model can still be served, but read these first.",
        examples=[["did not beat the majority-class baseline on test data (accuracy 0.30 vs 0.39)"]],
    )
    created: str = Field(description="When the model was trained (UTC).", examples=["2026-11-21T06:00:00+00:00"])
    device: str = Field(description="Where the model runs.", examples=["cpu"])
    streamable: bool = Field(description="Whether /stream/<task> and the /stream WebSocket take this model.", examples=[True])
    not_streamable_because: str | None = Field(
        default=None, description="Why the model cannot stream (null when it can).",
        examples=["it is bidirectional: its backward pass reads the whole sequence again with every new step; "
                  "train it with --no-bidirectional to stream"],
    )


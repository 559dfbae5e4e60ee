"""The JSON of an Open Inference Protocol infer request and answer, as the API page documents them.

Nothing validates with these: ``service.v2.protocol`` reads every request and names each problem. They
exist so the page (``service.openapi``) shows the request and answer fields, and so a fuzzer reading
the page sends bodies shaped like real ones. Each one allows whatever the codec accepts and no more:
a body outside these schemas gets a 4xx.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

WholeNumber = Annotated[int, Field(ge=0)]


class InputParameters(BaseModel):
    """A tensor's parameters: where its binary data is, when it is sent as binary."""

    binary_data_size: WholeNumber | SkipJsonSchema[None] = Field(
        default=None,
        description="This tensor's bytes (little-endian, row-major) after the JSON header, in the order of the "
        "inputs; instead of `data`.",
        examples=[786432],
    )


class InputTensor(BaseModel):
    """One input: the values (`sequence` of a classifier, `history` of a forecaster) or `lengths`."""

    name: str = Field(description="`sequence` (classifiers) or `history` (forecasters), or `lengths`.", examples=["sequence"])
    shape: list[WholeNumber] = Field(description="[N, T, F] for the values, [N] for `lengths`.", examples=[[2, 3, 1]])
    datatype: Literal["FP32", "INT32", "INT64"] = Field(
        description="FP32 for the values; INT32 or INT64 for `lengths`.", examples=["FP32"]
    )
    data: list[Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="The values in row-major order, flat or nested; or none, with `parameters.binary_data_size`.",
        examples=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]],
    )
    parameters: InputParameters | SkipJsonSchema[None] = None


class RequestParameters(BaseModel):
    """The request's parameters."""

    binary_data_output: bool | SkipJsonSchema[None] = Field(
        default=None, description="Send every output as binary data (default false).", examples=[True]
    )


class OutputParameters(BaseModel):
    """One requested output's parameters."""

    binary_data: bool | SkipJsonSchema[None] = Field(
        default=None, description="Send this output as binary data (default: the request's `binary_data_output`).",
        examples=[False],
    )


class RequestedOutput(BaseModel):
    """An output to send back."""

    name: str = Field(
        description="`probabilities`, `label_index` or `label` (classifiers); `forecast` or `quantiles` (forecasters).",
        examples=["probabilities"],
    )
    parameters: OutputParameters | SkipJsonSchema[None] = None


class InferRequestBody(BaseModel):
    """An infer request's JSON: the whole body, or with binary tensors its first
    `Inference-Header-Content-Length` bytes."""

    id: str | None = Field(default=None, description="Echoed in the answer.", examples=["batch-7"])
    parameters: RequestParameters | SkipJsonSchema[None] = None
    inputs: list[InputTensor] = Field(min_length=1, description="The values, and `lengths` when instances differ in length.")
    outputs: list[RequestedOutput] | None = Field(default=None, description="The outputs to send, in order (default: all).")


class OutputTensor(BaseModel):
    """One output of the answer."""

    name: str = Field(examples=["probabilities"])
    datatype: Literal["FP32", "INT64", "BYTES"] = Field(examples=["FP32"])
    shape: list[WholeNumber] = Field(description="[N, C], [N], [N, H, K] or [N, Q, H, K].", examples=[[1, 2]])
    data: list[Any] | SkipJsonSchema[None] = Field(
        default=None, description="The values, flat, in row-major order; absent when sent as binary.", examples=[[0.3, 0.7]]
    )
    parameters: InputParameters | SkipJsonSchema[None] = None


class InferAnswer(BaseModel):
    """An infer answer's JSON: the whole body, or with binary outputs its first
    `Inference-Header-Content-Length` bytes."""

    model_name: str = Field(examples=["italypower-gru"])
    model_version: str = Field(examples=["3oxk2hxp5gdy2ax4"])
    id: str | SkipJsonSchema[None] = Field(default=None, description="The request's `id`, when it had one.")
    outputs: list[OutputTensor]


INFER_SCHEMAS = (InferRequestBody, InferAnswer)

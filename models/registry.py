"""A tiny model registry: ``register_model(name, factory)``, ``create_model(name, **hparams)`` builds it.

The stored artifact keeps the registry *name* and the hyper-parameters, never a class, so loading is
``create_model(meta["model_name"], **meta["hparams"])``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory`` (a class or function returning an ``nn.Module``) under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = factory


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, **hparams) -> nn.Module:
    """Build the registered model ``name`` with ``hparams``; an unknown name lists the valid ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None
    return factory(**hparams)

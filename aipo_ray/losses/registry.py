"""Losses registered by name, so config picks one and adding one touches a single file."""

from __future__ import annotations

from .base import PreferenceLoss

_REGISTRY: dict[str, type[PreferenceLoss]] = {}


def register_loss(name: str):
    """Class decorator: `@register_loss("aipo")` makes `build_loss("aipo", ...)` find it."""

    def decorate(cls: type[PreferenceLoss]) -> type[PreferenceLoss]:
        if not (isinstance(cls, type) and issubclass(cls, PreferenceLoss)):
            raise TypeError(f"@register_loss({name!r}) needs a PreferenceLoss subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_losses() -> list[str]:
    return sorted(_REGISTRY)


def loss_class(name: str) -> type[PreferenceLoss]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; known losses: {', '.join(available_losses())}"
        ) from None


def loss_defaults(name: str) -> dict[str, float | None]:
    """Hparam names of a loss and their defaults (None: required)."""
    return dict(loss_class(name).defaults)


def build_loss(name: str, **hparams: float) -> PreferenceLoss:
    """Instantiate a registered loss; unknown names and hparams raise ValueError naming them."""
    return loss_class(name)(**hparams)

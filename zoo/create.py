"""``create_model(spec) -> (nn.Module, Preprocess)``, dispatched to the spec's source."""

from __future__ import annotations

from typing import Any

from zoo.spec import ModelSpec, Preprocess


def create_model(spec: ModelSpec | str, *, num_labels: int | None = None,
                 labels: list[str] | tuple[str, ...] | None = None,
                 pretrained: bool = True, model_kwargs: dict[str, Any] | None = None) -> tuple[Any, Preprocess]:
    """Build the torch module for ``spec`` (a spec or any name ``resolve`` accepts).

    ``labels`` (or ``num_labels``) puts a fresh classification head on the model.
    ``pretrained=False`` gives random weights: a smoke test that needs no download.
    ``model_kwargs`` go to the source's constructor (timm ``create_model`` kwargs, or
    transformers config overrides), e.g. ``{"depth": 2}`` to shrink a ViT for a test.
    """
    from zoo import sources
    from zoo.resolver import resolve

    if isinstance(spec, str):
        spec = resolve(spec)
    return sources.for_spec(spec).create_model(spec, num_labels=num_labels, labels=labels,
                                               pretrained=pretrained, model_kwargs=model_kwargs)

"""Auxiliary output heads for any model: dimensional regression (arousal / valence / dominance) and speaker gender.

`attach_heads(model, n_classes, heads)` keeps the model's own layers and parameter names and adds `aux_dims` (a
linear layer + sigmoid: ratings are normalised to [0, 1], see `mer.data.targets`) and `aux_gender` (2 logits) on
the representation its classifier receives (the last `nn.Linear` with `n_classes` outputs, or `model.classifier`
where a model names it), read through a forward pre-hook. The model's forward then returns a dict
`{"logits", "dims"?, "gender"?}`; the loop and the evaluator read the logits with `logits_of`. The hooks are plain
functions of the module they run on, so copies of the model (EMA) keep working on their own weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.schema import HeadsConfig

_CLASSIFIER_ATTR = "_mer_classifier_name"


def logits_of(out) -> Tensor:
    """The categorical logits of a model's output (a tensor, or the dict of a model with heads)."""
    return out["logits"] if isinstance(out, dict) else out


def find_classifier(model: nn.Module, n_classes: int) -> tuple[str, nn.Linear]:
    named = getattr(model, "classifier", None)
    if isinstance(named, nn.Linear):
        return "classifier", named
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n_classes]
    if not found:
        raise UserError(f"model.heads: {type(model).__name__} has no final linear layer with {n_classes} outputs to "
                        "attach the auxiliary heads to")
    return found[-1]


def _keep_features(module: nn.Module, args: tuple) -> None:
    module._mer_features = args[0]


def _head_outputs(model: nn.Module, args: tuple, logits: Tensor) -> dict[str, Tensor]:
    clf = model.get_submodule(getattr(model, _CLASSIFIER_ATTR))
    h = clf._mer_features.float()
    clf._mer_features = None
    out = {"logits": logits}
    if model.aux_dims is not None:
        out["dims"] = torch.sigmoid(model.aux_dims(h))
    if model.aux_gender is not None:
        out["gender"] = model.aux_gender(h)
    return out


def attach_heads(model: nn.Module, n_classes: int, heads: HeadsConfig) -> nn.Module:
    """`model` with the auxiliary heads of `heads` (unchanged when it asks for none)."""
    if not heads.dims and not heads.gender:
        if not heads.categorical:
            raise UserError("config key 'model.heads.categorical': false needs model.heads.dims (a dimensional-only "
                            "task) or model.heads.gender")
        return model
    name, clf = find_classifier(model, n_classes)
    setattr(model, _CLASSIFIER_ATTR, name)
    model.aux_dims = nn.Linear(clf.in_features, len(heads.dims)) if heads.dims else None
    model.aux_gender = nn.Linear(clf.in_features, 2) if heads.gender else None
    clf.register_forward_pre_hook(_keep_features)
    model.register_forward_hook(_head_outputs)
    return model

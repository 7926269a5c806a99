"""Grouping a flat state_dict into layers by key prefix, the way every KAN family's reader needs."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor


def natural_key(text: str) -> list:
    """``layers.10`` after ``layers.9``: numbers compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def layer_groups(state: Mapping[str, Tensor], required: set[str]) -> list[tuple[str, dict[str, Tensor]]]:
    """Every prefix P for which ``P + suffix`` exists for each suffix in ``required``, in natural order.

    Returns (prefix, {suffix: tensor}) with *all* keys under the prefix (not only the required ones),
    so optional tensors (``spline_scaler``, ``bias``) come along. A prefix is what precedes the
    suffix: ``layers.0.`` for ``layers.0.base_weight``.
    """
    anchor = min(required, key=len)
    prefixes = [key[: -len(anchor)] for key in state if key.endswith(anchor)]
    groups = []
    for prefix in sorted(set(prefixes), key=natural_key):
        if all(prefix + suffix in state for suffix in required):
            tensors = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            groups.append((prefix, tensors))
    return groups

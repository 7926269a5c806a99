"""What the page's sidebar turns user text into, and the message for a model/input mismatch."""

from __future__ import annotations

import pytest

from netatlas.app.loader_view import parse_kwargs, parse_preprocessing
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.model_info import describe_model
from netatlas.backend.errors import NetatlasError

BLANK = {"size": "", "grayscale": None, "mean": "", "std": ""}


def test_blank_fields_keep_the_sidecar():
    assert parse_preprocessing(BLANK, lambda: {"size": [28, 28], "grayscale": True}) is None


def test_fields_override_the_sidecar_field_by_field():
    pre = parse_preprocessing({**BLANK, "size": "64 32"}, lambda: {"grayscale": True, "mean": [0.5], "std": [0.25]})
    assert (pre.size, pre.grayscale, pre.mean, pre.std) == ((64, 32), True, (0.5,), (0.25,))
    pre = parse_preprocessing({**BLANK, "size": "28", "grayscale": True, "mean": "0.1307", "std": "0.3081"}, dict)
    assert (pre.size, pre.channels, pre.mean, pre.std) == ((28, 28), 1, (0.1307,), (0.3081,))


@pytest.mark.parametrize("fields, message", [
    ({**BLANK, "size": "big"}, "numbers"), ({**BLANK, "size": "1 2 3"}, "one or two"),
    ({**BLANK, "grayscale": False, "mean": "0.5 0.5"}, "1 or 3 values"), ({**BLANK, "std": "0"}, "positive"),
])
def test_bad_fields_are_user_errors(fields, message):
    with pytest.raises(NetatlasError, match=message):
        parse_preprocessing(fields, dict)


def test_kwargs_must_be_a_json_object():
    assert parse_kwargs('{"num_classes": 3}') == {"num_classes": 3}
    for text in ("[1, 2]", "{num_classes: 3}"):
        with pytest.raises(NetatlasError):
            parse_kwargs(text)


def test_a_model_that_rejects_the_input_shape_says_how_to_fix_it():
    with pytest.raises(NetatlasError, match="DemoResNet failed on a 1x3x28x28 batch.*Preprocessing"):
        describe_model(DemoResNet(in_channels=1), (1, 3, 28, 28))

"""Errors of the torch frontend say what is wrong with the model (issue #8, defect 16)."""
import pytest
import torch

import memplan
from memplan.errors import MemplanError, UnsupportedOpError


class MutatesInput(torch.nn.Module):
    def forward(self, x):
        x.add_(1)
        return x * 2


class CountsCalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return x * 2


def test_input_mutation_names_the_input_and_the_fix():
    with pytest.raises(UnsupportedOpError) as info:
        memplan.compile(MutatesInput(), (torch.randn(3),))
    message = str(info.value)
    assert "mutates its input %x in place" in message
    assert "x = x.clone()" in message and "functional" in message
    assert "model.eval()" not in message
    assert "test_torch_export_errors.py" in message  # where, in the user's code
    assert "\n" not in message


def test_buffer_mutation_is_not_blamed_on_training_mode():
    with pytest.raises(MemplanError) as info:
        memplan.compile(CountsCalls(), (torch.randn(3),))
    message = str(info.value)
    assert "updates its buffer 'calls' in place" in message and "even in eval mode" in message
    assert "model.eval()" not in message

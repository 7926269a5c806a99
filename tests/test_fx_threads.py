"""fx traces beside other threads: a server finds one session's residual units and draws another's diagram
while a third session's extraction runs a model. fx patches nn.Module for the whole process while it
traces; with backend.fx_threads the patches act only in the tracing thread, and traces run one at a time."""

from __future__ import annotations

import threading

import torch
import torchvision
from torch import nn
from torch.fx import _symbolic_trace as fx_trace

from netatlas.backend.circuit.trace import example_input, trace_circuit
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.residual.blocks import find_residual_units

ROUNDS = 6


def circuit_signature(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, str]]:
    circuit = trace_circuit(model, example_input(shape))
    return [(op.type_name, str(op.shape)) for op in circuit.ops.values()]


def test_traces_in_threads_beside_a_running_model():
    model, resnet = DemoResNet().eval(), torchvision.models.resnet18().eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    # references, traced alone
    units_alone = [u.module for u in find_residual_units(model)]
    circuit_alone = circuit_signature(resnet, (1, 3, 64, 64))
    assert units_alone == [f"blocks.{i}" for i in range(6)] and len(circuit_alone) > 50

    stop, errors, forwards = threading.Event(), [], [0]
    units_found: list[list[str]] = []
    circuits: list[list[tuple[str, str]]] = []

    def guarded(work):
        def run() -> None:
            try:
                work()
            except Exception as exc:        # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
        return threading.Thread(target=run)

    def run_model() -> None:
        while not stop.is_set():
            with torch.no_grad():
                torch.testing.assert_close(model(x), expected)
            forwards[0] += 1

    def find_units() -> None:
        for _ in range(ROUNDS):
            units_found.append([u.module for u in find_residual_units(model)])

    def draw() -> None:
        for _ in range(ROUNDS // 2):
            circuits.append(circuit_signature(resnet, (1, 3, 64, 64)))

    runner = guarded(run_model)
    tracers = [guarded(find_units), guarded(find_units), guarded(draw)]
    runner.start()
    for t in tracers:
        t.start()
    for t in tracers:
        t.join()
    stop.set()
    runner.join()

    assert not errors, errors[0]
    assert forwards[0] > 0
    assert units_found == [units_alone] * (2 * ROUNDS)
    assert circuits == [circuit_alone] * (ROUNDS // 2)
    assert nn.Module.__call__ is fx_trace._orig_module_call          # no trace left its patch behind
    assert nn.Module.__getattr__ is fx_trace._orig_module_getattr

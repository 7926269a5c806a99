"""Find the residual units of a model and control them during a forward pass.

A residual unit is one ``y = post(skip(x) + f(x))`` add: a torchvision BasicBlock or Bottleneck, the
demo's ResidualBlock, each of the two adds in a ViT encoder block or ``nn.TransformerEncoderLayer``
(three in a decoder layer), or any ``x + f(x)`` add that torch.fx finds in a module's traced graph.
While :func:`gated` is active, every unit's add goes through a :class:`ResidualGate`, which scales
branches (lesions, the order-k decomposition), routes gradients through only the branch or only the
skip (Veit et al.'s path-length measurement) and records branch and skip norms.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import operator
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.fx
from torch import nn

from netatlas.backend.errors import NetatlasError

Route = Literal["both", "branch", "skip"]
_ADD_TARGETS = (operator.add, operator.iadd, torch.add)
_TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@dataclass(frozen=True)
class ResidualUnit:
    """The ``index``-th residual add inside ``module`` (a name from ``model.named_modules()``)."""

    module: str
    index: int
    kind: str
    label: str

    @property
    def key(self) -> str:
        return f"{self.module}#{self.index}"


class ResidualGate:
    """Per-unit branch scale, gradient route and (optionally) recorded norms, read by each add."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.mask = torch.ones(n, device=device)
        self.route: list[Route] = ["both"] * n
        self.record = False
        self.records: dict[int, dict[str, torch.Tensor]] = {}

    def reset(self) -> None:
        self.mask.fill_(1.0)
        self.route = ["both"] * self.n
        self.record = False
        self.records.clear()

    def combine(self, unit: int, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``skip + m * branch`` with the unit's route applied; records per-sample norms if asked."""
        if self.record:
            s, b = skip.detach().flatten(1).float(), branch.detach().flatten(1).float()
            self.records[unit] = {
                "skip_norm": s.norm(dim=1), "branch_norm": b.norm(dim=1),
                "cos": nn.functional.cosine_similarity(s, b, dim=1), "branch": b,
            }
        route = self.route[unit]
        if route == "branch":
            skip = skip.detach()
        elif route == "skip":
            branch = branch.detach()
        return skip + self.mask[unit].to(branch.dtype) * branch


class _Combine(nn.Module):
    """Stands in for one residual add inside a traced block."""

    def __init__(self, gate: ResidualGate, unit: int) -> None:
        super().__init__()
        self.gate, self.unit = gate, unit

    def forward(self, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return self.gate.combine(self.unit, skip, branch)


class _BlockTracer(torch.fx.Tracer):
    """Traces one module's own forward with every submodule call kept as one node.

    An add found is then the module's own (a child's adds are found when the child is traced), and
    children fx cannot enter (shape arithmetic in Hugging Face attention) do no harm.
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _traceable(module: nn.Module) -> nn.Module:
    """``module``, or a shallow stand-in whose forward fx can read.

    Hugging Face wraps layer forwards in ``forward_with_checkpointing(self, *args, **kwargs)`` (and
    adds ``**kwargs`` of its own): fx would make proxies of the varargs and fail to unpack them. The
    stand-in shares the module's children and parameters and calls the unwrapped forward with its
    named arguments only.
    """
    cls = type(module)
    inner = inspect.unwrap(cls.forward)
    params = list(inspect.signature(inner).parameters.values())
    if inner is cls.forward and all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return module
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    namespace = {"inner": inner}
    exec(f"def forward({', '.join(names)}):\n    return inner({', '.join(names)})", namespace)
    stand_in_class = type(cls.__name__, (cls,), {})
    stand_in_class.forward = namespace["forward"]   # after the class exists: HF's __init_subclass__ re-wraps
    stand_in = copy.copy(module)
    stand_in.__class__ = stand_in_class
    return stand_in


def _keep_defaults(graph: torch.fx.Graph, module: nn.Module) -> None:
    """Placeholders keep their parameters' defaults, so the traced forward is called as the module is."""
    params = inspect.signature(inspect.unwrap(type(module).forward)).parameters
    for node in graph.nodes:
        if node.op == "placeholder" and node.target in params and params[node.target].default is not inspect.Parameter.empty:
            node.args = (params[node.target].default,)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen, stack = set(), [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _residual_adds(graph: torch.fx.Graph) -> list[tuple[torch.fx.Node, int]]:
    """Adds whose both operands depend on the input; returns (node, position of the skip operand).

    The skip is the operand the other one was computed from (x in x + f(x)); when neither is an
    ancestor of the other (a projected shortcut), the one with the shorter history.
    """
    inputs = {n for n in graph.nodes if n.op == "placeholder"}
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _ADD_TARGETS or len(node.args) != 2:
            continue
        a, b = node.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        hist_a, hist_b = _ancestors(a) | {a}, _ancestors(b) | {b}
        if not (hist_a & inputs and hist_b & inputs):
            continue
        if a in hist_b:
            skip = 0
        elif b in hist_a:
            skip = 1
        else:
            skip = 0 if len(hist_a) <= len(hist_b) else 1
        found.append((node, skip))
    return found


def _trace(module: nn.Module) -> torch.fx.GraphModule | None:
    try:
        graph = _BlockTracer().trace(_traceable(module))
    except Exception:  # control flow on tensor values, unsupported ops: not a traceable block
        return None
    _keep_defaults(graph, module)
    return torch.fx.GraphModule(module, graph)


def find_residual_units(model: nn.Module) -> list[ResidualUnit]:
    """Every residual add in ``model``, in definition order: each module's own adds, its children kept whole."""
    modules = list(model.named_modules())
    order = {name: i for i, (name, _) in enumerate(modules)}
    units: list[ResidualUnit] = []
    for name, module in modules:
        kind = type(module).__name__
        if isinstance(module, _TRANSFORMER_LAYERS):
            parts = ["self-attention", "feed-forward"] if isinstance(module, nn.TransformerEncoderLayer) \
                else ["self-attention", "cross-attention", "feed-forward"]
            units += [ResidualUnit(name, i, kind, f"{name} {p}") for i, p in enumerate(parts)]
            continue
        if not any(True for _ in module.children()):
            continue
        gm = _trace(module)
        adds = _residual_adds(gm.graph) if gm is not None else []
        if adds:
            for i in range(len(adds)):
                label = name or "(model)"
                units.append(ResidualUnit(name, i, kind, label if len(adds) == 1 else f"{label} add {i}"))
    return sorted(units, key=lambda u: (order[u.module], u.index))


def parse_units(model: nn.Module, keys: list[str]) -> list[ResidualUnit]:
    """Units chosen by the user as ``module`` (all its adds) or ``module#index`` keys."""
    found = find_residual_units(model)
    by_module: dict[str, list[ResidualUnit]] = {}
    for unit in found:
        by_module.setdefault(unit.module, []).append(unit)
    chosen: list[ResidualUnit] = []
    for key in keys:
        module, _, index = key.partition("#")
        candidates = by_module.get(module)
        if not candidates:
            raise NetatlasError(f"{module!r} holds no residual add (x + f(x)) that netatlas can find; "
                                f"found: {', '.join(by_module) or 'none'}")
        picked = [u for u in candidates if not index or str(u.index) == index]
        if not picked:
            raise NetatlasError(f"{module!r} has {len(candidates)} residual adds; {key!r} is not one")
        chosen += [u for u in picked if u not in chosen]
    return sorted(chosen, key=found.index)  # model order: depth and reordering's identity rely on it


def _transformer_forward(layer: nn.Module, slots: dict[int, int], gate: ResidualGate) -> Callable:
    """The forward of nn.TransformerEncoderLayer / DecoderLayer with the chosen adds gated (slow path).

    ``slots`` maps the layer's add index to the unit's position in the gate; other adds stay plain.
    """
    def add(i: int, skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return gate.combine(slots[i], skip, branch) if i in slots else skip + branch

    if isinstance(layer, nn.TransformerEncoderLayer):
        def forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False):
            x = src
            if layer.norm_first:
                x = add(0, x, layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal))
                return add(1, x, layer._ff_block(layer.norm2(x)))
            x = layer.norm1(add(0, x, layer._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal)))
            return layer.norm2(add(1, x, layer._ff_block(x)))
        return forward

    def forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = tgt
        if layer.norm_first:
            x = add(0, x, layer._sa_block(layer.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = add(1, x, layer._mha_block(layer.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                           memory_is_causal))
            return add(2, x, layer._ff_block(layer.norm3(x)))
        x = layer.norm1(add(0, x, layer._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
        x = layer.norm2(add(1, x, layer._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                                   memory_is_causal)))
        return layer.norm3(add(2, x, layer._ff_block(x)))
    return forward


@contextlib.contextmanager
def gated(model: nn.Module, units: list[ResidualUnit]) -> Iterator[ResidualGate]:
    """Route each unit's add through a gate for the duration; the model is restored afterwards."""
    modules = dict(model.named_modules())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gate = ResidualGate(len(units), device)
    by_module: dict[str, list[int]] = {}
    for i, unit in enumerate(units):
        by_module.setdefault(unit.module, []).append(i)
    patched: list[nn.Module] = []
    try:
        for name, indices in by_module.items():
            module = modules[name]
            module.__dict__["forward"] = _gated_forward(module, indices, units, gate)
            patched.append(module)
        yield gate
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _gated_forward(module: nn.Module, indices: list[int], units: list[ResidualUnit], gate: ResidualGate) -> Callable:
    prefix = units[indices[0]].module
    if isinstance(module, _TRANSFORMER_LAYERS):
        return _transformer_forward(module, {units[i].index: i for i in indices}, gate)
    gm = _trace(module)
    adds = _residual_adds(gm.graph) if gm is not None else []
    wanted = {units[i].index: i for i in indices}
    if gm is None or max(wanted) >= len(adds):
        raise NetatlasError(f"{prefix or '(model)'} no longer traces to {len(wanted)} residual adds")
    for position, (node, skip_at) in enumerate(adds):
        if position not in wanted:
            continue
        target = f"_netatlas_gate_{position}"
        gm.add_submodule(target, _Combine(gate, wanted[position]))
        with gm.graph.inserting_after(node):
            skip, branch = node.args[skip_at], node.args[1 - skip_at]
            replacement = gm.graph.call_module(target, (skip, branch))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.recompile()
    accepted = {n.target for n in gm.graph.nodes if n.op == "placeholder"}

    def forward(*args, **kwargs):   # keyword options the traced forward fixed (HF's **kwargs) are dropped
        return gm(*args, **{k: v for k, v in kwargs.items() if k in accepted})
    return forward

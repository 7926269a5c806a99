"""Find the residual units of a model and control them during a forward pass.

A residual unit is one ``y = post(skip(x) + f(x))`` add: a torchvision BasicBlock or Bottleneck, the
demo's ResidualBlock, each of the two adds in a ViT encoder block or ``nn.TransformerEncoderLayer``
(three in a decoder layer), or any ``x + f(x)`` add that torch.fx finds in a module's traced graph.
While :func:`gated` is active, every unit's add goes through a :class:`ResidualGate`, which scales
branches (lesions, the order-k decomposition), routes gradients through only the branch or only the
skip (Veit et al.'s path-length measurement) and records branch and skip norms. A gated add computes
its branch lazily where it can: a branch switched off is never run, and a memo (``paths``' prefix
reuse) may hand back the value an earlier pass computed for the same input.
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
from netatlas.backend.fx_threads import confine_fx_patches

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
    """Per-unit branch scale, gradient route and (optionally) recorded norms, read by each add.

    ``route`` is read when gradients flow back, not when the forward runs, so one forward pass can be
    differentiated along several routes. ``rows`` ([n, R]), when set, replaces ``mask`` with one
    scale per group of rows: R masks stacked along the batch dimension, run as one pass. ``memo``,
    when set, sees every add (``note``) and may supply a branch's value (``reuse``); see
    ``paths._PassMemo``.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = n
        self.mask = torch.ones(n, device=device)
        self.route: list[Route] = ["both"] * n
        self.record = False
        self.records: dict[int, dict[str, torch.Tensor]] = {}
        self.rows: torch.Tensor | None = None
        self.memo = None

    def reset(self) -> None:
        self.mask.fill_(1.0)
        self.rows = None
        self.route = ["both"] * self.n
        self.record = False
        self.records.clear()

    def combine(self, unit: int, skip: torch.Tensor,
                branch: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
        """``skip + m * branch`` with the unit's route applied; records per-sample norms if asked.

        ``branch`` may be a callable: it is then not run at all when m = 0 (``skip`` is returned,
        which equals ``skip + 0 * branch`` for any finite branch).
        """
        scale = self.mask[unit] if self.rows is None else _per_row(self.rows[unit], skip)
        if callable(branch):
            if not self.record and not bool(scale.any()):
                out = (skip.detach() if self.route[unit] == "branch" else skip).clone()
                return self._noted(unit, out)
            branch = self.memo.reuse(("branch", unit), branch) if self.memo is not None else branch()
        if self.record:
            s, b = skip.detach().flatten(1).float(), branch.detach().flatten(1).float()
            self.records[unit] = {
                "skip_norm": s.norm(dim=1), "branch_norm": b.norm(dim=1),
                "cos": nn.functional.cosine_similarity(s, b, dim=1), "branch": b,
            }
        scale = scale.to(branch.dtype)
        if torch.is_grad_enabled() and (skip.requires_grad or branch.requires_grad):
            # a copy of the scale: the gate's mask may change before this graph's last backward
            return self._noted(unit, _RoutedAdd.apply(skip, branch, scale.clone(), self, unit))
        return self._noted(unit, skip + scale * branch)

    def _noted(self, unit: int, out: torch.Tensor) -> torch.Tensor:
        if self.memo is not None:
            self.memo.note(unit)
        return out


def _per_row(scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One scale per group of rows of ``like`` (batch dimension first), shaped to broadcast."""
    rows = like.shape[0]
    if rows % len(scales):
        raise NetatlasError(f"{rows} rows do not split into {len(scales)} stacked masks")
    return scales.repeat_interleave(rows // len(scales)).view(rows, *[1] * (like.ndim - 1))


class _RoutedAdd(torch.autograd.Function):
    """``skip + m * branch`` whose gradient goes where ``gate.route[unit]`` says when backward runs.

    Returning None for the operand a route cuts is what ``detach`` would give, and autograd then
    skips that operand's whole backward subgraph.
    """

    @staticmethod
    def forward(ctx, skip, branch, scale, gate, unit):
        ctx.gate, ctx.unit = gate, unit
        ctx.save_for_backward(scale)
        ctx.operands = (skip.shape, skip.dtype, branch.shape, branch.dtype)
        return skip + scale * branch

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        skip_shape, skip_dtype, branch_shape, branch_dtype = ctx.operands
        route = ctx.gate.route[ctx.unit]
        grad_skip = grad_branch = None
        if ctx.needs_input_grad[0] and route != "branch":
            grad_skip = grad.sum_to_size(skip_shape).to(skip_dtype)
        if ctx.needs_input_grad[1] and route != "skip":
            grad_branch = (grad * scale).sum_to_size(branch_shape).to(branch_dtype)
        return grad_skip, grad_branch, None, None, None


class _Combine(nn.Module):
    """Stands in for one residual add inside a traced block; ``branch`` computes the branch lazily."""

    def __init__(self, gate: ResidualGate, unit: int, branch: nn.Module | None = None) -> None:
        super().__init__()
        self.gate, self.unit, self.branch = gate, unit, branch

    def forward(self, skip: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if self.branch is None:
            return self.gate.combine(self.unit, skip, inputs[0])
        return self.gate.combine(self.unit, skip, lambda: self.branch(*inputs))


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
    confine_fx_patches()                  # a server's other threads keep running models while this traces
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


def parse_units(model: nn.Module, keys: list[str], found: list[ResidualUnit] | None = None) -> list[ResidualUnit]:
    """Units chosen by the user as ``module`` (all its adds) or ``module#index`` keys, among ``found``
    (default: traced from ``model`` now; a Workspace passes the units it traced once)."""
    found = find_residual_units(model) if found is None else found
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
    def add(i: int, skip: torch.Tensor, branch: Callable[[], torch.Tensor]) -> torch.Tensor:
        return gate.combine(slots[i], skip, branch) if i in slots else skip + branch()

    if isinstance(layer, nn.TransformerEncoderLayer):
        def forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False):
            x = src
            if layer.norm_first:
                x = add(0, x, lambda: layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask,
                                                      is_causal=is_causal))
                return add(1, x, lambda: layer._ff_block(layer.norm2(x)))
            x = layer.norm1(add(0, x, lambda: layer._sa_block(x, src_mask, src_key_padding_mask,
                                                              is_causal=is_causal)))
            return layer.norm2(add(1, x, lambda: layer._ff_block(x)))
        return forward

    def forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = tgt
        if layer.norm_first:
            x = add(0, x, lambda: layer._sa_block(layer.norm1(x), tgt_mask, tgt_key_padding_mask,
                                                  tgt_is_causal))
            x = add(1, x, lambda: layer._mha_block(layer.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                                   memory_is_causal))
            return add(2, x, lambda: layer._ff_block(layer.norm3(x)))
        x = layer.norm1(add(0, x, lambda: layer._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
        x = layer.norm2(add(1, x, lambda: layer._mha_block(x, memory, memory_mask, memory_key_padding_mask,
                                                           memory_is_causal)))
        return layer.norm3(add(2, x, lambda: layer._ff_block(x)))
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
    _drop_unused_getitems(gm.graph)
    for position, (node, skip_at) in enumerate(adds):
        if position not in wanted:
            continue
        skip, branch = node.args[skip_at], node.args[1 - skip_at]
        owned = _branch_only(gm.graph, node, skip, branch)
        lazy, inputs = _branch_module(gm, owned, branch) if owned else (None, [branch])
        target = f"_netatlas_gate_{position}"
        gm.add_submodule(target, _Combine(gate, wanted[position], lazy))
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(target, (skip, *inputs))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        for moved in reversed(owned):
            gm.graph.erase_node(moved)
    gm.recompile()
    accepted = {n.target for n in gm.graph.nodes if n.op == "placeholder"}

    def forward(*args, **kwargs):   # keyword options the traced forward fixed (HF's **kwargs) are dropped
        return gm(*args, **{k: v for k, v in kwargs.items() if k in accepted})
    return forward


def _drop_unused_getitems(graph: torch.fx.Graph) -> None:
    """Erase ``out[i]`` nodes nobody reads (``x, _ = attention(...)``), so they do not pin their tuple."""
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target is operator.getitem and not node.users:
            graph.erase_node(node)


def _branch_only(graph: torch.fx.Graph, add: torch.fx.Node, skip: torch.fx.Node,
                 branch: torch.fx.Node) -> list[torch.fx.Node]:
    """The nodes computed only for ``branch`` (graph order): what a switched-off branch need not run.

    A node belongs to the branch when its only users do (the branch node itself: only the add), so
    moving them behind the add changes nothing else. Empty when an in-place op would write a value
    from outside the branch, since running it later, or not at all, could change that value.
    """
    history = _ancestors(branch) | {branch}
    owned: set[torch.fx.Node] = set()
    for node in reversed(list(graph.nodes)):
        if (node in history and node is not skip and node.op in ("call_module", "call_function", "call_method")
                and all(user in owned or (node is branch and user is add) for user in node.users)):
            owned.add(node)
    nodes = [n for n in graph.nodes if n in owned]
    if any(_writes_outside(graph, n, owned) for n in nodes):
        return []
    return nodes


def _writes_outside(graph: torch.fx.Graph, node: torch.fx.Node, owned: set[torch.fx.Node]) -> bool:
    """Whether ``node`` writes in place (``x.relu_()``, ``+=``, ``ReLU(inplace=True)``) to a value not owned."""
    first = node.args[0] if node.args else None
    if not isinstance(first, torch.fx.Node) or first in owned:
        return False
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        return node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv) \
            or getattr(node.target, "__name__", "").endswith("_") or bool(node.kwargs.get("inplace"))
    return bool(getattr(graph.owning_module.get_submodule(node.target), "inplace", False))


def _branch_module(gm: torch.fx.GraphModule, nodes: list[torch.fx.Node],
                   branch: torch.fx.Node) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]]:
    """``nodes`` moved into a GraphModule of their own (sharing ``gm``'s submodules), and its inputs."""
    owned = set(nodes)
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in owned))
    graph = torch.fx.Graph()
    env = {a: graph.placeholder(f"branch_in_{i}") for i, a in enumerate(inputs)}
    for node in nodes:
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[branch])
    return torch.fx.GraphModule(gm, graph), inputs

"""The model as a neural circuit (Abbott 2024): operations, the tensors between them, and modules.

A ``Circuit`` is what ``trace.trace_circuit`` reads off a model. ``Circuit.view`` turns it into what a
diagram draws: repeated identical blocks folded to one fenced block marked xN, and modules beyond a
depth collapsed to one box. ``symbols.axis_symbols`` names each tensor's axes (B, C, H, W, S, D ...).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from netatlas.backend.errors import NetatlasError


@dataclass
class Op:
    """One operation: a leaf module call, a function or method on tensors, an input or an output."""

    id: str
    kind: str                 # "input" | "output" | "param" | "module" | "function" | "add" | "block"
    label: str                # what the box shows: "L+", "Conv", "Norm", "Attn", "ReLU", "+", "cat"
    target: str               # module path, function name, or input/output name
    type_name: str            # module class or function name
    learned: bool = False     # has parameters: drawn bold
    scope: tuple[str, ...] = ()   # enclosing module paths, outermost first
    shape: tuple[int, ...] | None = None   # the (first) output tensor's shape
    params: int = 0
    repeat: int = 1           # for a folded block drawn as one box: how many it stands for
    axes: tuple[int, ...] | None = None   # permute/transpose: the input axis each output axis comes from


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    shape: tuple[int, ...]
    inferred: bool = False    # hook graphs: the producer was guessed from call order


@dataclass
class Circuit:
    """Ops in execution order, the tensors between them, and every module's type and parameter count."""

    ops: dict[str, Op]
    edges: list[Edge]
    modules: dict[str, str]                  # path -> class name (every module met in a scope)
    module_params: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    method: str = "fx"                       # how it was read: "fx", "fx+export", "fx+hooks", "hooks" ...

    # ---- structure -----------------------------------------------------------------------------
    def members(self, module: str) -> list[str]:
        """Ids of the ops inside ``module`` (at any depth), in execution order."""
        return [i for i, op in self.ops.items() if module in op.scope]

    def children(self, module: str | None) -> list[str]:
        """Direct child modules of ``module`` (None: the root) that contain ops, in first-use order."""
        depth = 0 if module is None else module.count(".") + 1
        seen: dict[str, None] = {}
        for op in self.ops.values():
            if (module is None or module in op.scope) and len(op.scope) > 0:
                inner = [s for s in op.scope if _depth(s) > depth and (module is None or s.startswith(module + "."))]
                if inner:
                    seen.setdefault(min(inner, key=_depth), None)
        return list(seen)

    def repeat_groups(self) -> list[list[str]]:
        """Runs of consecutive sibling modules with identical structure, each feeding the next.

        A run stands for "this block xN" (a ResNet stage's identical blocks, a transformer's layers).
        """
        groups: list[list[str]] = []
        stack: list[str | None] = [None]
        while stack:
            parent = stack.pop()
            kids = self.children(parent)
            stack.extend(kids)
            signatures = {kid: self._signature(kid) for kid in kids}
            run: list[str] = []
            for kid in kids:
                if run and signatures[run[-1]] == signatures[kid] and self._feeds(run[-1], kid):
                    run.append(kid)
                    continue
                if len(run) > 1:
                    groups.append(run)
                run = [kid]
            if len(run) > 1:
                groups.append(run)
        return groups

    def _signature(self, module: str) -> tuple:
        ids = self.members(module)
        index = {op_id: n for n, op_id in enumerate(ids)}
        ops = tuple((self.modules.get(module), _relative(self.ops[i].scope, module), self.ops[i].type_name,
                     self.ops[i].label, self.ops[i].shape) for i in ids)
        wiring = tuple(sorted((index.get(e.src, -1), index[e.dst], e.shape) for e in self.edges if e.dst in index))
        return ops, wiring

    def _feeds(self, a: str, b: str) -> bool:
        inside_a, inside_b = set(self.members(a)), set(self.members(b))
        return any(e.src in inside_a and e.dst in inside_b for e in self.edges)

    # ---- views ---------------------------------------------------------------------------------
    def view(self, fold_depth: int | None = None, unfold: set[str] | frozenset[str] = frozenset(),
             unroll: set[str] | frozenset[str] = frozenset(), fold_repeats: bool = True) -> CircuitView:
        """What to draw: repeated blocks folded to one xN, modules at ``fold_depth`` and below as boxes.

        ``fold_depth`` 1 draws the model's top-level modules as boxes, 2 opens those and boxes their
        children; None (or 0) opens every module. ``unfold`` names modules to open anyway (their
        ancestors open with them); ``unroll`` names folded runs (by their first block) to draw in full.
        """
        self._check_modules(set(unfold) | set(unroll))
        circuit, repeats = self, {}
        if fold_repeats:
            for run in self.repeat_groups():
                if run[0] not in unroll:
                    circuit = circuit._fold(run)
                    repeats[run[0]] = run
        collapsed = _collapsed(circuit, fold_depth, set(unfold))
        for module in collapsed:   # outermost only: none lies inside another
            circuit = circuit._collapse(module, len(repeats.get(module, [module])))
        return CircuitView(circuit, repeats, collapsed)

    def _check_modules(self, names: set[str]) -> None:
        known = {s for op in self.ops.values() for s in op.scope}
        unknown = sorted(names - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise NetatlasError(f"no module {unknown[0]!r} with inner operations in this model{hint}")

    def _fold(self, run: list[str]) -> Circuit:
        """Keep the first block of ``run``; its outputs feed what the last block's outputs fed."""
        first = self.members(run[0])
        counterpart = {}
        for member in run[1:]:
            counterpart.update(zip(self.members(member), first))
        edges: list[Edge] = []
        for e in self.edges:
            src, dst = counterpart.get(e.src, e.src), counterpart.get(e.dst, e.dst)
            internal = e.src in counterpart and e.dst in counterpart
            chained = e.dst in counterpart and src in first and e.src not in counterpart
            if internal or chained:
                continue
            edges.append(replace(e, src=src, dst=dst))
        ops = {i: op for i, op in self.ops.items() if i not in counterpart}
        return replace(self, ops=ops, edges=_unique(edges))

    def _collapse(self, module: str, repeat: int) -> Circuit:
        """Draw ``module`` as one box: every op inside it merges into the first."""
        inside = self.members(module)
        if not inside:
            return self
        head = inside[0]
        last = self.ops[inside[-1]]
        params = self.module_params.get(module, 0)
        parts = module.split(".")
        short = ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]   # "layer1.0", not "0"
        box = Op(id=head, kind="block", label=short, target=module,
                 type_name=self.modules.get(module, ""), learned=params > 0,
                 scope=tuple(s for s in self.ops[head].scope if _depth(s) < _depth(module)),
                 shape=last.shape, params=params, repeat=repeat)
        merged = set(inside)
        edges = [replace(e, src=head if e.src in merged else e.src, dst=head if e.dst in merged else e.dst)
                 for e in self.edges if not (e.src in merged and e.dst in merged)]
        ops = {i: (box if i == head else op) for i, op in self.ops.items() if i == head or i not in merged}
        return replace(self, ops=ops, edges=_unique(edges))


@dataclass
class CircuitView:
    """A circuit ready to draw, with what was folded (run heads -> their runs) and collapsed."""

    circuit: Circuit
    repeats: dict[str, list[str]]
    collapsed: set[str]

    @property
    def boxes(self) -> int:
        """Drawn operation boxes (inputs and outputs excluded)."""
        return sum(op.kind not in ("input", "output") for op in self.circuit.ops.values())

    def repeat_count(self, module: str) -> int:
        return len(self.repeats.get(module, [module]))


def _collapsed(circuit: Circuit, fold_depth: int | None, unfold: set[str]) -> set[str]:
    """The outermost modules to draw as single boxes: at ``fold_depth`` or deeper, not opened."""
    if not fold_depth:
        return set()
    opened = {a for u in unfold for a in _lineage(u)}
    modules = {s for op in circuit.ops.values() for s in op.scope}
    return {m for m in modules if m not in opened and _depth(m) >= fold_depth
            and all(a in opened for a in _lineage(m)[:-1] if _depth(a) >= fold_depth)}


def _lineage(module: str) -> list[str]:
    """``module``'s ancestors and itself, outermost first: a.b.c -> [a, a.b, a.b.c]."""
    parts = module.split(".")
    return [".".join(parts[:d]) for d in range(1, len(parts) + 1)]


def _depth(module: str) -> int:
    return module.count(".") + 1


def _relative(scope: tuple[str, ...], module: str) -> tuple[str, ...]:
    return tuple(s[len(module):] for s in scope if s.startswith(module))


def _unique(edges: list[Edge]) -> list[Edge]:
    seen: dict[tuple[str, str, tuple[int, ...]], Edge] = {}
    for e in edges:
        if e.src != e.dst:
            seen.setdefault((e.src, e.dst, e.shape), e)
    return list(seen.values())

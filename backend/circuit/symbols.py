"""Size symbols for every axis of every wire of a circuit, following each axis's role, not its size.

A symbol's letter says its role: B the batch; C and D features (a conv's channels, a token's width);
H, W, T spatial positions and S a sequence (positions too). An axis keeps its symbol through an op
when the op keeps it (same place and size, or moved by a permute); an axis the op makes anew takes
the role of the input axis it replaces, so a conv's 64 output channels are a C even when the image
is 64 pixels high. Equal sizes of different roles therefore get different symbols (C₂ = H = 64),
and one symbol always names one size.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cache
from math import prod

from netatlas.backend.circuit.graph import Circuit, Edge

# Letters for an axis with no input axis to inherit from, by its tensor's rank and its position: NCHW
# maps, [B, S, D] sequences, [B, D] features. An axis of another size with the same letter gets a subscript.
ROLE_LETTERS = {4: "BCHW", 3: "BSD", 2: "BD", 1: "D", 5: "BCTHW"}
ROLES = {"B": "batch", "C": "feature", "D": "feature", "H": "position", "W": "position", "T": "position",
         "S": "position"}
SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")

Symbols = tuple[str, ...]


def axis_symbols(circuit: Circuit) -> dict[tuple[str, str], Symbols]:
    """A symbol for every axis of every wire: {(src, dst): symbols} in each wire's axis order.

    Ops are visited in execution order, so every input wire is named before its consumer. Non-batch
    axes of size 1 are "1".
    """
    inputs: dict[str, list[Edge]] = defaultdict(list)
    outputs: dict[str, list[Edge]] = defaultdict(list)
    for e in circuit.edges:
        inputs[e.dst].append(e)
        outputs[e.src].append(e)
    namer = _Namer()
    wires: dict[tuple[str, str], Symbols] = {}
    for op_id in circuit.ops:
        incoming = [wires[(e.src, e.dst)] for e in inputs[op_id] if (e.src, e.dst) in wires]
        op = circuit.ops[op_id]
        by_shape: dict[tuple[int, ...], Symbols] = {}
        for e in outputs[op_id]:
            if e.shape not in by_shape:
                by_shape[e.shape] = namer.name(e.shape, incoming, op.kind, op.axes)
            wires[(e.src, e.dst)] = by_shape[e.shape]
    return wires


def role(symbol: str) -> str | None:
    """The role a symbol's letter names; None for "1" and for merged axes (HW), which mix roles."""
    if symbol == "1" or sum(ch in ROLES for ch in symbol) != 1:
        return None
    return ROLES[symbol[0]]


def default_letter(rank: int, pos: int) -> str:
    letters = ROLE_LETTERS.get(rank, "B" + "D" * max(rank - 1, 0))
    return letters[pos] if pos < len(letters) else "D"


class _Namer:
    """The symbols named so far (symbol -> size) and the rules that name a new wire's axes."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.tails: dict[int, str] = {}   # size -> the symbol last seen as a wire's last (feature) axis

    def name(self, shape: tuple[int, ...], incoming: list[Symbols], kind: str,
             axes: tuple[int, ...] | None = None) -> Symbols:
        """The symbols of an op's output of ``shape``, from its input wires' symbols.

        ``axes``: for an op that only moves axes, the input axis each output axis comes from.
        """
        first = incoming[0] if incoming else ()
        pool = [s for syms in incoming for s in syms]
        if axes is not None and len(first) == len(axes):
            out = tuple(first[j] for j in axes)
        elif kind == "input":
            out = tuple(self._new(default_letter(len(shape), p), n, first_axis=p == 0) for p, n in enumerate(shape))
        elif not incoming:            # a learned tensor (a class token): sizes already named, latest first
            out = self._fill(shape, [None] * len(shape), [s for s in reversed(self.sizes) if s != "1"], strict=False)
        elif len(first) == len(shape):
            out = self._fill(shape, self._kept(shape, first), pool, first)
        else:
            out = self._fill(shape, self._aligned(shape, first), pool)
        if len(out) > 1:
            self.tails[shape[-1]] = out[-1]
        return out

    def _kept(self, shape: tuple[int, ...], first: Symbols) -> list[str | None]:
        """The input axes an op of the same rank keeps in place: same position, same size."""
        return [s if self.sizes.get(s) == n else None for s, n in zip(first, shape)]

    def _aligned(self, shape: tuple[int, ...], first: Symbols) -> list[str | None]:
        """A reshape, flatten, pool or squeeze: the order-keeping match of output axes to input axes.

        Each output axis is one input axis of its size, adjacent input axes merged (HW), or new. The
        match explaining most input axes wins; among equals, the one whose axes' roles suit their new
        places (a mean over a sequence keeps the features, not the positions of the same size), then
        the leftmost.
        """
        sizes = [self.sizes.get(s, 0) for s in first]

        @cache
        def best(o: int, i: int) -> tuple[tuple[int, int], tuple[str | None, ...]]:
            if o == len(shape):
                return (0, 0), ()
            if shape[o] == 1 and o > 0:
                score, rest = best(o + 1, i)
                return score, ("1", *rest)
            options = []
            for j, k in _spans(i, len(first)):
                if prod(sizes[j:k + 1]) == shape[o] and (k == j or min(sizes[j:k + 1]) > 1):
                    symbol = first[j] if k == j else self._merged(first[j:k + 1], shape[o])
                    fits = int(role(symbol) == ROLES[default_letter(len(shape), o)])
                    (explained, fit), rest = best(o + 1, k + 1)
                    options.append(((explained + k - j + 1, fit + fits), (symbol, *rest)))
            score, rest = best(o + 1, i)
            options.append((score, (None, *rest)))
            return max(options, key=lambda option: option[0])   # the first of equals

        return list(best(0, 0)[1])

    def _merged(self, axes: Symbols, size: int) -> str:
        """A flattened axis is named for the adjacent axes it merges: [B, C, H, W] -> [B, C, HW]."""
        symbol = "".join(axes)
        self.sizes.setdefault(symbol, size)
        return symbol

    def _fill(self, shape: tuple[int, ...], kept: list[str | None], pool: list[str],
              first: Symbols = (), strict: bool = True) -> Symbols:
        """Axes not kept: size 1 is "1"; else a pool symbol of the same size and role; else a new one.

        A learned tensor's axes have no input to take a role from (``strict=False``): any symbol of
        the size will do, one of the expected role first.
        """
        out: list[str] = []
        for pos, n in enumerate(shape):
            if kept[pos] is not None:
                out.append(kept[pos])
                continue
            if n == 1 and (pos > 0 or not strict):
                out.append("1")
                continue
            letter = self._letter(len(shape), pos, first[pos] if first else None)
            wanted = ROLES[letter]
            same_size = [s for s in pool if self.sizes.get(s) == n and s not in out]
            carried = next((s for s in same_size if role(s) == wanted), None)
            if carried is None and not strict and same_size:
                carried = same_size[0]
            if carried is None and pos == 0 and self.sizes.get("B") == n:
                carried = "B"
            if carried is None and pos == len(shape) - 1 and pos > 0 and wanted == "feature":
                carried = self.tails.get(n)    # features back at their width: d_model after the MLP
            out.append(carried or self._new(letter, n))
        return tuple(out)

    def _letter(self, rank: int, pos: int, inherited: str | None) -> str:
        """The letter of the input axis an output axis replaces, in the rank's own letter when roles agree."""
        letter = default_letter(rank, pos)
        if inherited is None or role(inherited) is None or role(inherited) == ROLES[letter]:
            return letter
        return inherited[0]

    def _new(self, letter: str, size: int, first_axis: bool = False) -> str:
        if first_axis and "B" not in self.sizes:
            letter = "B"
        symbol, n = letter, 1
        while symbol in self.sizes and self.sizes[symbol] != size:
            n += 1
            symbol = letter + str(n).translate(SUBSCRIPTS)
        self.sizes.setdefault(symbol, size)
        return symbol


def _spans(start: int, stop: int):
    """Every (j, k) with start <= j <= k < stop: the runs of adjacent input axes, leftmost first."""
    return ((j, k) for j in range(start, stop) for k in range(j, stop))

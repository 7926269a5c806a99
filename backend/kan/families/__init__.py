"""Each KAN library's state_dict layout, read into ``EdgeLayer``s; detection by key names.

Every family module defines ``FAMILY``: its name, how its keys look, the options its keys do not
store, and ``read(state, options) -> KANNetwork``. ``detect`` tries them in ``ORDER`` (most specific
signature first); ``read_network`` reads with the detected or the user's chosen family.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from netatlas.backend.kan.base import KANNetwork
from netatlas.backend.errors import NetatlasError


@dataclass(frozen=True)
class Family:
    name: str                                            # "pykan", "efficient-kan", ...
    title: str                                           # for menus: "pykan (MultKAN / KAN 0.2)"
    matches: Callable[[Mapping[str, Tensor]], bool]      # does this state_dict look like ours?
    read: Callable[[Mapping[str, Tensor], dict[str, Any]], KANNetwork]
    options: dict[str, str] = field(default_factory=dict)   # option name -> what it means, for help
    network_keys: str = ""     # regex of keys the family reads outside its layer prefixes (pykan's node affines)


def families() -> dict[str, Family]:
    """Every known family by name, in detection order."""
    from netatlas.backend.kan.families import (afkan, chebykan, efficient_kan, fastkan, fourierkan,
                                               pykan, relukan, trukan)
    modules = (pykan, efficient_kan, fastkan, chebykan, fourierkan, relukan, trukan, afkan)
    return {m.FAMILY.name: m.FAMILY for m in modules}


def detect(state: Mapping[str, Tensor]) -> Family:
    """The family whose key signature ``state`` has; a NetatlasError naming the families otherwise."""
    for family in families().values():
        if family.matches(state):
            return family
    names = ", ".join(families())
    raise NetatlasError("this checkpoint is not a KAN that netatlas recognises: its keys match none of "
                        f"{names}. If it is one of them, choose the family explicitly (--family).")


def read_network(state: Mapping[str, Tensor], family: str | None = None,
                 options: dict[str, Any] | None = None) -> KANNetwork:
    """``state`` as a KANNetwork, by ``family`` or the detected one; user errors as NetatlasError."""
    known = families()
    if family is not None and family not in known:
        raise NetatlasError(f"unknown KAN family {family!r}; choose one of {', '.join(known)}")
    chosen = known[family] if family else detect(state)
    options = dict(options or {})
    unknown = set(options) - set(chosen.options)
    if unknown:
        raise NetatlasError(f"{chosen.name} takes no option {', '.join(sorted(unknown))}; "
                            f"it takes: {', '.join(chosen.options) or 'none'}")
    network = chosen.read(state, options)
    stray = unread_keys(state, network, chosen.network_keys)
    if stray:
        network.notes.append(f"{len(stray)} tensors lie outside the KAN layers and are not read "
                             f"({', '.join(stray[:4])}{' ...' if len(stray) > 4 else ''}): modules between "
                             "layers are skipped, so the inputs behind later layers' curves may differ from "
                             "the model's own")
    return network


def unread_keys(state: Mapping[str, Tensor], network: KANNetwork, network_keys: str = "") -> list[str]:
    """Keys of ``state`` under none of the network's layer prefixes (and not the family's own extras)."""
    prefixes = tuple(name.rstrip(".") + "." for name in network.names)
    extra = re.compile(network_keys) if network_keys else None
    return [key for key in state if not key.startswith(prefixes) and not (extra and extra.search(key))]


def flag_option(options: dict[str, Any], name: str, default: bool) -> bool:
    """A yes/no option: a bool (from a config file) or text (the page and the CLI: true/false, yes/no, 1/0)."""
    value = options.get(name, default)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise NetatlasError(f"option {name} must be true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["k=3", "base_fun=silu"]`` -> {"k": 3, "base_fun": "silu"}: numbers where they parse."""
    options: dict[str, Any] = {}
    for item in filter(None, (item.strip() for item in items)):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise NetatlasError(f"family option {item!r}: write name=value, e.g. k=3")
        options[name.strip()] = _number(value.strip())
    return options


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text

"""The decoder registry: name -> `Decoder` (its function adapter, its flag, the config fields it reads, its help).

`python -m search.decode` builds its mutually exclusive decoder flags (`--NAME`), its dispatch and its docs from
`DECODERS`, in this order. Adding a decoder: a module here defining one `Decoder` (see `base.py`), one line
below, and its test; the search algorithm itself may live in its own module under `search/`.
"""

from search.decoders.base import Decoder, Option
from search.decoders.beam import BEAM
from search.decoders.bon import BON
from search.decoders.cbs import CBS
from search.decoders.mcts import MCTS
from search.decoders.sampling import GREEDY, SAMPLE

DECODERS: dict[str, Decoder] = {d.name: d for d in (SAMPLE, GREEDY, BON, BEAM, CBS, MCTS)}


def get_decoder(name: str) -> Decoder:
    """The registered decoder `name`; a ValueError naming the registered ones otherwise."""
    if name not in DECODERS:
        raise ValueError(f"method must be one of {tuple(DECODERS)}, got {name!r}")
    return DECODERS[name]


__all__ = ["DECODERS", "Decoder", "Option", "get_decoder"]

"""The frozen reference π_ref, in one of three forms behind one interface.

- a separate model (default: a frozen copy of --model, or --ref_model);
- the policy itself with its LoRA adapter disabled (no second copy of the weights in memory);
- a disk cache of per-token reference log-probs (`--ref_logps precompute`): the reference runs once over the
  data, the cache is keyed by a hash of the reference weights, the tokenised pairs and the relevant config, and
  later runs reuse it. For TDPO, which needs the reference's full next-token distribution, the cache holds the
  reference's final hidden states at response positions and only the reference LM-head weight is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from tokendpo.data import TokenizedPair, collate_pairs
from tokendpo.logps import batch_hidden, lm_head, sequence_logps


class Reference:
    """Reference log-probs (and, for TDPO, hidden states + LM head) for micro-batches of pairs."""

    def __init__(self, model: torch.nn.Module | None, *, adapter_host: torch.nn.Module | None = None,
                 kernel: str = "auto"):
        self.model = model
        self.adapter_host = adapter_host  # a peft model whose adapter is disabled to act as the reference
        self.kernel = kernel
        self.cache: dict[str, torch.Tensor] | None = None  # flat per-token logps (+ hidden) and offsets
        self.head: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _ctx(self):
        return self.adapter_host.disable_adapter() if self.adapter_host is not None else contextlib.nullcontext()

    @torch.no_grad()
    def sequence_logps(self, batch: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        """(2B,) summed reference log-probs: rows 0..B-1 chosen, B..2B-1 rejected (collate_pairs order)."""
        if self.cache is not None:
            return self._cached(indices, "logps").to(batch["input_ids"].device)
        with self._ctx():
            return sequence_logps(self.model, batch, kernel=self.kernel).logps

    @torch.no_grad()
    def response_hidden(self, batch: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        """(N, H) reference final hidden states at the response positions of the batch, in mask order."""
        if self.cache is not None:
            if "hidden" not in self.cache:
                raise ValueError("reference cache has no hidden states; rebuild it with a tdpo loss_type")
            return self._cached(indices, "hidden", flat=True).to(batch["input_ids"].device)
        with self._ctx():
            h = batch_hidden(self.model, batch)
        return h[:, :-1][batch["labels"][:, 1:] != -100]

    def lm_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.head is not None:
            return self.head
        return lm_head(self.model)

    # ------------------------------------------------------------------------------------------ cache
    def _cached(self, indices: list[int], key: str, flat: bool = False) -> torch.Tensor:
        """Per-sequence slices of the cache; sequence 2i is pair i's chosen response, 2i+1 its rejected one."""
        offsets = self.cache["offsets"]
        order = [2 * i for i in indices] + [2 * i + 1 for i in indices]
        parts = [self.cache[key][offsets[s]:offsets[s + 1]] for s in order]
        return torch.cat(parts) if flat else torch.stack([p.sum() for p in parts])

    def precompute(self, pairs: list[TokenizedPair], pad_token_id: int, cache_dir: Path, *, key: str,
                   with_hidden: bool, batch_size: int = 8, progress: bool = True) -> Path:
        """Run the reference once over `pairs` (or load the cache for `key`), then free the model."""
        path = cache_dir / f"ref-{key}.safetensors"
        if path.is_file():
            self.cache = load_file(str(path))
        else:
            logps, hidden, lengths = [], [], []
            device = next(self.model.parameters()).device
            for i in tqdm(range(0, len(pairs), batch_size), desc="reference", disable=not progress):
                chunk = pairs[i:i + batch_size]
                batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_token_id).items()}
                with torch.no_grad(), self._ctx():
                    out = sequence_logps(self.model, batch, kernel=self.kernel, keep_hidden=with_hidden)
                b = len(chunk)
                for j in range(b):  # interleave: chosen j, rejected j
                    for row in (j, b + j):
                        m = out.mask[row]
                        logps.append(out.token_logps[row][m].float().cpu())
                        lengths.append(int(m.sum()))
                if with_hidden:
                    # out.hidden is in mask order (row-major over the 2B rows); regroup per pair
                    per_row = torch.split(out.hidden.float().cpu(), out.lengths.tolist())
                    for j in range(b):
                        hidden.extend([per_row[j], per_row[b + j]])
            offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
            offsets[1:] = torch.tensor(lengths).cumsum(0)
            self.cache = {"logps": torch.cat(logps), "offsets": offsets}
            if with_hidden:
                self.cache["hidden"] = torch.cat(hidden)
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file(self.cache, str(tmp))
            tmp.rename(path)
        if with_hidden:  # keep only the LM head: TDPO recomputes π_ref's distribution from cached hidden states
            w, b = self.lm_head()
            self.head = (w.detach().clone(), None if b is None else b.detach().clone())
        if self.adapter_host is None:
            self.model = None  # free the reference model
        return path


def cache_key(ref_model: torch.nn.Module, pairs: list[TokenizedPair], config: dict) -> str:
    """sha256 over the reference weights, the tokenised pairs and the config that affects the numbers."""
    h = hashlib.sha256()
    for name, t in sorted(ref_model.state_dict().items()):
        if "lora_" in name:  # the adapter-disabled base is the reference; adapter weights don't matter
            continue
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:20]

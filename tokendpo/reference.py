"""The frozen reference π_ref, in one of three forms behind one interface.

- a separate model (default: a frozen copy of --model, or --ref_model);
- the policy itself with its LoRA adapter disabled (no second copy of the weights in memory);
- a disk cache of per-token reference log-probs (`--ref_logps precompute`): the reference runs once over the
  data, the cache is keyed by a hash of the reference weights, the tokenised pairs and the relevant config, and
  later runs reuse it. For TDPO, which needs the reference's full next-token distribution, the cache holds the
  reference's final hidden states at response positions and only the reference LM-head weight is kept.

A separate reference model can also move during training: TR-DPO's `--sync_ref_model` mixes the policy into it
every k steps (`Reference.mix_in`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model as load_into, save_file, save_model
from tqdm.auto import tqdm

from tokendpo.data import TokenizedPair, collate_pairs
from tokendpo.logps import batch_hidden, lm_head, sequence_logps


SYNCED_REFERENCE = "reference.safetensors"  # in checkpoint dirs of --sync_ref_model runs


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

    @torch.no_grad()
    def token_logps(self, batch: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        """(2B, L) per-token reference log-probs, left-aligned (token t of each response in column t, 0 past its
        length); rows in collate_pairs order. LD-DPO weights tokens by position, so it needs these."""
        if self.cache is not None:
            offsets, flat = self.cache["offsets"], self.cache["logps"]
            order = [2 * i for i in indices] + [2 * i + 1 for i in indices]
            parts = [flat[offsets[s]:offsets[s + 1]] for s in order]
            return torch.nn.utils.rnn.pad_sequence(parts, batch_first=True).to(batch["input_ids"].device)
        with self._ctx():
            out = sequence_logps(self.model, batch, kernel=self.kernel)
        return response_token_matrix(out.token_logps, out.mask, batch.get("seq_ids"))

    @torch.no_grad()
    def mix_in(self, policy: torch.nn.Module, alpha: float) -> None:
        """TR-DPO's soft update (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment",
        https://arxiv.org/abs/2404.09656):  θ_ref ← α·θ + (1 − α)·θ_ref, parameter by parameter.

        policy: the (unwrapped) policy model with the reference's parameter names. Under FSDP2 its parameters are
        DTensor shards: each is gathered in full (`full_tensor`, a collective — every rank calls this, in the same
        parameter order) and every rank updates its own full copy of the reference, so all ranks stay equal."""
        ref_params, pol_params = self.check_mixable(policy)
        for name, p in pol_params.items():  # one fixed order on every rank: the collectives line up
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            target = ref_params[name]
            target.mul_(1 - alpha).add_(full.detach().to(device=target.device, dtype=target.dtype), alpha=alpha)

    def check_mixable(self, policy: torch.nn.Module) -> tuple[dict, dict]:
        """(reference, policy) parameters by name; a ValueError when `mix_in` could not mix them."""
        if self.model is None or self.adapter_host is not None:
            raise ValueError("--sync_ref_model needs a separate reference model (not a precomputed cache, not the "
                             "adapter-disabled policy)")
        ref_params = dict(self.model.named_parameters())
        pol_params = dict(policy.named_parameters())
        if ref_params.keys() != pol_params.keys():
            only = sorted(ref_params.keys() ^ pol_params.keys())[:3]
            raise ValueError(f"--sync_ref_model: the reference and the policy have different parameters "
                             f"(e.g. {', '.join(only)}); mixing needs the same architecture")
        bad = [n for n, p in ref_params.items() if p.shape != pol_params[n].shape]
        if bad:
            raise ValueError(f"--sync_ref_model: parameter {bad[0]} has shape {tuple(ref_params[bad[0]].shape)} in "
                             f"the reference but {tuple(pol_params[bad[0]].shape)} in the policy")
        return ref_params, pol_params

    def save_weights(self, directory: Path) -> None:
        """A moving (synced) reference is training state: its weights go into a checkpoint dir as
        `reference.safetensors` (tied weights stored once), so a resumed TR-DPO run continues from it."""
        save_model(self.model, str(Path(directory) / SYNCED_REFERENCE))

    def load_weights(self, directory: Path) -> None:
        path = Path(directory) / SYNCED_REFERENCE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {SYNCED_REFERENCE}: it was not saved by a --sync_ref_model "
                                    f"run, so the synced reference cannot be restored")
        load_into(self.model, str(path))

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


def response_token_matrix(token_logps: torch.Tensor, mask: torch.Tensor,
                          seq_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(S, L) per-response token values, left-aligned, 0 past each length; differentiable.

    token_logps, mask: (rows, T-1) as `SequenceLogps` holds them (position t predicts token t+1). Padded batches
    have one response per row (S = rows); packed ones (`seq_ids` (1, T), the batch's) several per row, in
    sequence-id order as `sequence_logps` sums them."""
    values = token_logps[mask]  # (N,), row-major: each response's tokens in order
    if seq_ids is None:
        owner = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1).expand_as(mask)[mask]
        n_seq = mask.shape[0]
    else:
        owner = seq_ids[:, 1:][mask]
        n_seq = int(seq_ids.max()) + 1
    order = torch.argsort(owner, stable=True)  # group by response, keeping token order
    values, owner = values[order], owner[order]
    counts = torch.bincount(owner, minlength=n_seq)  # (S,)
    starts = counts.cumsum(0) - counts
    pos = torch.arange(owner.shape[0], device=owner.device) - starts[owner]  # token index within its response
    out = values.new_zeros(n_seq, int(counts.max()) if owner.numel() else 0)
    return out.index_put((owner, pos), values)


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

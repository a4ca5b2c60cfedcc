"""The implicit reward of DPO, defined once for the whole project.

Rafailov et al. (2023, 2024): a policy π trained with DPO against a reference π_ref assigns every token
the reward

    r(s_t, a_t) = β · (log π(a_t | s_t) − log π_ref(a_t | s_t))

and a sequence the sum of its token rewards. Training, evaluation and search all import this function.
"""

import torch


def implicit_reward(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """β·(log π − log π_ref), elementwise: per token for token log-probs, per sequence for summed ones."""
    return beta * (policy_logps - reference_logps)

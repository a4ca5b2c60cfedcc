"""Tests for tokendpo/losses.py: bad input is refused with a message that names the argument and the fix."""

import pytest
import torch

from tests.tokendpo.loss_cases import PAIR, t64
from tokendpo.losses import preference_loss, sft_loss


# --------------------------------------------------------------------------------------------- errors


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'.*sigmoid, robust, ipo, hinge, tdpo1, tdpo2, simpo"):
        preference_loss(**PAIR, loss_type="kto")


@pytest.mark.parametrize("loss_type,missing", [
    ("ipo", "chosen_lengths and rejected_lengths"), ("simpo", "chosen_lengths and rejected_lengths"),
    ("tdpo1", "chosen_kl and rejected_kl"), ("tdpo2", "chosen_kl and rejected_kl")])
def test_missing_required_inputs_are_named(loss_type, missing):
    with pytest.raises(ValueError, match=f"loss_type '{loss_type}' needs {missing}"):
        preference_loss(**PAIR, loss_type=loss_type)
    one = {"ipo": {"chosen_lengths": [3]}, "simpo": {"chosen_lengths": [3]},
           "tdpo1": {"chosen_kl": t64(0.1)}, "tdpo2": {"chosen_kl": t64(0.1)}}[loss_type]
    with pytest.raises(ValueError, match=f"needs {missing.split(' and ')[1]}$"):
        preference_loss(**PAIR, loss_type=loss_type, **one)


def test_reference_required_except_for_simpo():
    with pytest.raises(ValueError, match="needs reference_chosen_logps and reference_rejected_logps"):
        preference_loss(t64(-1.0), t64(-2.0), None, None)
    with pytest.raises(ValueError, match="needs reference_rejected_logps"):
        preference_loss(t64(-1.0), t64(-2.0), t64(-1.0), None, loss_type="hinge")


def test_bad_shapes_values_and_options():
    with pytest.raises(ValueError, match=r"reference_chosen_logps has 2 entries but policy_chosen_logps has 1"):
        preference_loss(t64(-1.0), t64(-2.0), t64(-1.0, -3.0), t64(-2.0))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[B\].*\(2, 3\)"):
        preference_loss(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="policy_rejected_logps must be a floating-point tensor"):
        preference_loss(t64(-1.0), torch.tensor([2]), t64(-1.0), t64(-2.0))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        preference_loss([-1.0], t64(-2.0), t64(-1.0), t64(-2.0))
    with pytest.raises(ValueError, match="beta must be > 0"):
        preference_loss(**PAIR, beta=0.0)
    with pytest.raises(ValueError, match=r"\[0, 0.5\) for 'robust'"):
        preference_loss(**PAIR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"\[0, 0.5\] for 'sigmoid'"):
        preference_loss(**PAIR, label_smoothing=0.7)
    with pytest.raises(ValueError, match="label_smoothing=0.1 has no meaning for loss_type 'hinge'"):
        preference_loss(**PAIR, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        preference_loss(**PAIR, loss_type="ipo", chosen_lengths=[0], rejected_lengths=[2])
    with pytest.raises(ValueError, match=r"rejected_lengths must have shape \[1\]"):
        preference_loss(**PAIR, loss_type="ipo", chosen_lengths=[1], rejected_lengths=[2, 3])
    with pytest.raises(ValueError, match="rejected_kl has 2 entries"):
        preference_loss(**PAIR, loss_type="tdpo1", chosen_kl=t64(0.1), rejected_kl=t64(0.1, 0.2))
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        sft_loss(t64(-1.0), torch.tensor([0]))

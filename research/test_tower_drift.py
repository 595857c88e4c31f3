import torch

from research.tower_drift import closed_close_views, drift


def test_drift_is_zero_for_the_same_tokens_and_grows_with_the_distance():
    t = torch.randn(3, 64, 16)
    assert drift(t, t) == 0.0
    assert abs(drift(torch.zeros_like(t), t) - 1.0) < 1e-6          # nothing left: as far as the tokens are large
    assert drift(t + 0.1 * torch.randn_like(t), t) < drift(t + torch.randn_like(t), t)


def test_close_views_are_the_model_input_and_only_of_items_with_evidence():
    views = closed_close_views(12, seed=0)
    assert 0 < len(views) <= 12 and {v.size for v in views} == {(64, 64)}

"""sampling/guidance.py: one classifier-free guidance, and several terms as one call."""

import torch

from stylevid.sampling.guidance import classifier_free, guide


def test_classifier_free_is_the_textbook_formula_and_diffusers_order():
    torch.manual_seed(0)
    uncond, cond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    got = classifier_free(torch.cat([uncond, cond]), 7.5)
    assert torch.equal(got, uncond + 7.5 * (cond - uncond))  # bit for bit: the samplers' figures do not move
    assert torch.equal(classifier_free(torch.cat([uncond, cond]), 1.0), uncond + (cond - uncond))
    assert torch.equal(classifier_free(torch.cat([uncond, cond]), 0.0), uncond)


def test_several_terms_add_their_weighted_differences():
    """Gen-1-style: classifier-free guidance plus temporal guidance w_t (ε_video − ε_image)."""
    base, cond, video, image = (torch.full((2,), value) for value in (1.0, 3.0, 10.0, 4.0))
    got = guide(base, [(2.0, cond, base), (0.5, video, image)])
    assert torch.equal(got, torch.full((2,), 1.0 + 2.0 * 2.0 + 0.5 * 6.0))
    assert torch.equal(guide(base, []), base)

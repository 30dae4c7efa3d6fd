"""Output heads: normalised, exact losses, faithful sampling, cached == full for every head."""

import importlib.util
import math

import pytest
import torch

from wavedil import WaveNet, WaveNetConfig
from wavedil.audio import linear_decode, linear_encode
from wavedil.distributions import Categorical, Gaussian, MixtureOfLogistics, make_distribution
from wavedil.generate import generate

Q16 = 65536


def _mol_params() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 9, generator=g, dtype=torch.float64)
    p[:, 3:6] *= 0.5  # means inside [-1, 1] mostly
    p[:, 6:] = p[:, 6:] - 3.0  # scales ~ 0.05
    p[2, 3] = 0.9999  # a component at the upper edge
    p[2, 6] = -9.0  # below log_scale_min: clamped
    return p


def _gauss_params() -> torch.Tensor:
    return torch.tensor([[0.1, -3.0], [0.9999, -7.5], [-2.0, -1.0], [0.0, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("classes", [256, Q16])
def test_probabilities_over_all_bins_sum_to_one(classes):
    for dist, params in [
        (MixtureOfLogistics(classes, 3), _mol_params()),
        (Gaussian(classes), _gauss_params()),
        (Categorical(classes), torch.randn(3, classes, dtype=torch.float64)),
    ]:
        total = dist.log_probs(params).exp().sum(dim=1)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-9, rtol=0)


def _brute_mass(cdf, classes: int, i: int) -> float:
    """Mass of bin i from the closed-form CDF, edges from the code -> centre map."""
    centre, half = 2 * i / classes - 1, 1 / classes
    hi = 1.0 if i == classes - 1 else cdf(centre + half)
    lo = 0.0 if i == 0 else cdf(centre - half)
    return hi - lo


@pytest.mark.parametrize("classes", [256, Q16])
def test_mol_loss_matches_brute_force(classes):
    dist = MixtureOfLogistics(classes, 3, log_scale_min=-7.0)
    params = _mol_params()
    checked = 0
    for row in range(params.shape[0]):
        p = params[row].tolist()
        w = torch.softmax(torch.tensor(p[:3], dtype=torch.float64), 0).tolist()
        comps = [(p[3 + k], math.exp(max(p[6 + k], -7.0))) for k in range(3)]

        def sigmoid(z):
            return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))

        def cdf(x):
            return sum(wk * sigmoid((x - m) / s) for wk, (m, s) in zip(w, comps))

        for i in [0, 1, classes // 3, classes // 2, classes // 2 + 3, classes - 2, classes - 1]:
            mass = _brute_mass(cdf, classes, i)
            if mass < 1e-9:
                continue  # the closed form's difference of CDFs loses its digits there
            expected = -math.log2(mass)
            got = dist.bits(params[row : row + 1], torch.tensor([i]), reduction="none").item()
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-6), (row, i)
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("classes", [256, Q16])
def test_gaussian_loss_matches_brute_force(classes):
    dist = Gaussian(classes, log_scale_min=-7.0)
    params = _gauss_params()
    checked = 0
    for row in range(params.shape[0]):
        m, s = params[row, 0].item(), math.exp(max(params[row, 1].item(), -7.0))

        def cdf(x):
            return 0.5 * math.erfc(-(x - m) / (s * math.sqrt(2)))

        for i in [0, 1, classes // 4, classes // 2, int(classes * 0.55), classes - 1]:
            mass = _brute_mass(cdf, classes, i)
            if mass < 1e-9:
                continue  # the closed form's difference of CDFs loses its digits there
            got = dist.bits(params[row : row + 1], torch.tensor([i]), reduction="none").item()
            assert got == pytest.approx(-math.log2(mass), rel=1e-6, abs=1e-6), (row, i)
            checked += 1
    assert checked >= 8


def test_far_tail_losses_are_finite_and_gradients_too():
    for dist, params in [(MixtureOfLogistics(Q16, 3), _mol_params()), (Gaussian(Q16), _gauss_params())]:
        params = params.clone().requires_grad_(True)
        targets = torch.tensor([0, Q16 - 1, Q16 // 2, 12345])[: params.shape[0]]
        loss = dist.bits(params, targets)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(params.grad).all()


def _chi2_z(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Wilson-Hilferty z-score of Pearson's chi-square statistic (large: the draws do not fit)."""
    n = counts.sum().item()
    keep = probs * n >= 5
    expected = probs[keep] * n
    other_e = n - expected.sum()
    other_c = counts[~keep].sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum().item()
    k = int(keep.sum())
    if other_e >= 5:
        stat += float((other_c - other_e) ** 2 / other_e)
        k += 1
    dof = k - 1
    return ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))


@pytest.mark.parametrize("name", ["mol", "gaussian", "mulaw"])
def test_sampling_frequencies_match_the_distribution(name):
    classes = 256
    torch.manual_seed(0)
    params = {
        "mol": torch.tensor([[0.5, -0.3, 0.0, -0.4, 0.05, 0.6, -2.5, -3.5, -2.0]]),
        "gaussian": torch.tensor([[0.2, -1.8]]),
        "mulaw": torch.randn(1, classes) * 2,
    }[name]
    dist = make_distribution(name, classes, mixtures=3)
    n = 200_000
    gen = torch.Generator().manual_seed(1234)
    u = torch.rand(n, dist.uniforms_per_sample, generator=gen, dtype=torch.float64)
    draws = dist.sample(params.expand(n, -1), u if dist.uniforms_per_sample > 1 else u[:, 0])
    counts = torch.bincount(draws, minlength=classes).double()
    probs = dist.log_probs(params).exp()[0]
    assert _chi2_z(counts, probs) < 4.0
    # The same test rejects a draw at another temperature: it can fail.
    wrong = dist.sample(params.expand(n, -1), u if dist.uniforms_per_sample > 1 else u[:, 0], temperature=1.15)
    assert _chi2_z(torch.bincount(wrong, minlength=classes).double(), probs) > 4.0


def test_greedy_sampling_takes_the_mode():
    mol = MixtureOfLogistics(Q16, 2)
    p = torch.tensor([[2.0, 0.0, 0.25, -0.5, -4.0, -4.0]])
    assert mol.sample(p, torch.rand(1, 2), temperature=0).item() == linear_encode(torch.tensor(0.25)).item()
    g = Gaussian(Q16)
    assert g.sample(torch.tensor([[-0.5, -3.0]]), torch.rand(1), temperature=0).item() == Q16 // 4


def test_linear_codes_are_16_bit_pcm():
    pcm = torch.arange(-32768, 32768)
    x = pcm.float() / 32768
    codes = linear_encode(x)
    assert torch.equal(codes, pcm + 32768)
    assert torch.equal(linear_decode(codes), x)


def test_bad_head_options_raise():
    with pytest.raises(ValueError, match="model.output"):
        make_distribution("laplace", 256)
    with pytest.raises(ValueError, match="mixtures"):
        MixtureOfLogistics(256, 0)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        MixtureOfLogistics(256, 2).log_prob(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


def _tiny(output: str, **kw) -> WaveNet:
    torch.manual_seed(0)
    cfg = WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=8, head_channels=8,
                        layers_per_stack=4, stacks=2, kernel_size=2, output=output, mixtures=3, **kw)  # fmt: skip
    return WaveNet(cfg).eval()


@pytest.mark.parametrize("output", ["mulaw", "mol", "gaussian"])
def test_cached_equals_full_for_every_head(output):
    model = _tiny(output)
    Q = model.quantization_channels
    assert Q == (256 if output == "mulaw" else Q16)
    codes = torch.randint(0, Q, (3, 50))
    with torch.no_grad():
        full = model(codes)
        state = model.init_state(3)
        parts = []
        for i in range(0, 50, 7):
            out, state = model.step(codes[:, i : i + 7], state)
            parts.append(out)
    assert full.shape == (3, model.dist.param_channels, 50)
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("output", ["mol", "gaussian"])
def test_continuous_heads_generate_reproducibly(output):
    model = _tiny(output)
    a = generate(model, 64, batch_size=2, seed=5).codes
    b = generate(model, 64, batch_size=2, seed=5).codes
    c = generate(model, 64, batch_size=2, seed=6).codes
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < Q16
    auto = generate(model, 8, seed=5, backend="auto")
    expected = "fast" if importlib.util.find_spec("numba") is not None else "torch"
    assert auto.backend == expected  # the fast back-end runs every head


def test_continuous_loss_trains_down():
    model = _tiny("mol")
    model.train()
    t = torch.arange(401, dtype=torch.float32)
    seg = linear_encode(0.5 * torch.sin(2 * math.pi * t / 40)).unsqueeze(0).repeat(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        loss = model.loss(seg)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0  # bits per sample


def test_a_uniform_of_zero_never_draws_a_class_of_no_probability():
    """u = 0 gave class 0 even where class 0 has probability 0 (exp underflows to exactly 0 in
    float64): the draw is the first class of any probability, in the torch head and in the fast
    back-end's kernel alike; for u > 0 nothing changes (side "left" of searchsorted)."""
    import numpy as np

    from wavedil.distributions import sample_categorical
    from wavedil.fast._kernels import _sample_row

    logits = torch.tensor([[-1e4, -1e4, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0], [-1e4, 0.0, -1e4, 0.0]])
    u = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    assert sample_categorical(logits, u).tolist() == [2, 0, 1]
    scratch = np.empty(4, np.float64)
    for row, want in zip(logits.numpy(), [2, 0, 1]):
        assert _sample_row(row, 4, 0.0, 1.0, False, scratch) == want
    # just above 0 and at the top the draws are what they were
    u = torch.tensor([1e-300, 0.999999, 0.5], dtype=torch.float64)
    assert sample_categorical(logits, u).tolist() == [2, 3, 1]  # row 2: cdf 0, .5, .5, 1: side "left"
    for row, v, want in zip(logits.numpy(), u.tolist(), [2, 3, 1]):
        assert _sample_row(row, 4, v, 1.0, False, scratch) == want

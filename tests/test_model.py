"""WaveNet: cached generation equals the full forward pass; seeds; prompts; bad input."""

import math

import pytest
import torch

from conftest import tiny_config
from wavedil import WaveNet, WaveNetConfig, generate, mu_law_decode, mu_law_encode
from wavedil.generate import MAX_SAMPLES


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("schedule", [dict(layers_per_stack=4, stacks=2), dict(dilations=(1, 3, 9, 2)), dict(dilations=(1,))])
@pytest.mark.parametrize("batch", [1, 3])
def test_teacher_forced_cached_equals_full(kernel_size, schedule, batch):
    torch.manual_seed(0)
    net = WaveNet(tiny_config(kernel_size=kernel_size, **schedule)).eval()
    codes = torch.randint(0, net.quantization_channels, (batch, 80))
    with torch.no_grad():
        full = net(codes)
        state = net.init_state(batch)
        steps = []
        for t in range(codes.shape[1]):
            logits, state = net.step(codes[:, t : t + 1], state)
            steps.append(logits)
    cached = torch.cat(steps, -1)
    assert cached.shape == full.shape == (batch, net.quantization_channels, 80)
    assert (cached - full).abs().max().item() <= 1e-4


def test_loss_in_bits_and_shapes(tiny_model):
    seg = torch.randint(0, 32, (2, 41))
    loss = tiny_model.loss(seg)
    logits = tiny_model(seg[:, :-1])
    nats = torch.nn.functional.cross_entropy(logits, seg[:, 1:])
    assert loss.item() == pytest.approx(nats.item() / math.log(2), rel=1e-6)
    # an untrained model is close to uniform: about log2(Q) bits
    assert abs(loss.item() - math.log2(32)) < 1.0


def test_model_is_causal_by_gradient(tiny_model):
    codes = torch.randint(0, 32, (1, 30))
    emb = tiny_model.embed(codes).transpose(1, 2).detach().requires_grad_(True)
    _, skip = tiny_model.stack(emb)
    tiny_model.head(skip)[:, :, 12].sum().backward()
    g = emb.grad.abs().sum(dim=(0, 1))
    assert torch.all(g[13:] == 0) and g[12] > 0


def test_same_seed_same_samples_different_seed_different(tiny_model):
    a = generate(tiny_model, 200, batch_size=2, seed=7).codes
    b = generate(tiny_model, 200, batch_size=2, seed=7).codes
    c = generate(tiny_model, 200, batch_size=2, seed=8).codes
    assert a.shape == (2, 200) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 32


def test_generation_equals_teacher_forced_sampling(tiny_model):
    """Each generated sample is the inverse-CDF draw from the full model's logits on its past."""
    res = generate(tiny_model, 60, batch_size=2, seed=3, temperature=0.8)
    seq = torch.cat([torch.full((2, 1), 16), res.codes], dim=1)  # the silence sample opens the stream
    with torch.no_grad():
        logits = tiny_model(seq[:, :-1])  # (B, Q, 61)
    u = torch.rand(60, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    probs = torch.softmax(logits.double().permute(0, 2, 1) / 0.8, dim=-1)
    cdf = probs.cumsum(-1)
    expect = (cdf < (u.T * cdf[:, :, -1]).unsqueeze(-1)).sum(-1)
    assert torch.equal(res.codes, expect)


def test_prompt_primes_the_state(tiny_model):
    prompt = torch.randint(0, 32, (50,))
    a = generate(tiny_model, 30, batch_size=3, seed=1, prompt=prompt).codes
    b = generate(tiny_model, 30, batch_size=3, seed=1, prompt=prompt.expand(3, -1).clone()).codes
    c = generate(tiny_model, 30, batch_size=3, seed=1).codes
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # greedy decoding after a prompt continues the full model's argmax
    g = generate(tiny_model, 1, seed=0, prompt=prompt, temperature=0).codes
    with torch.no_grad():
        assert g.item() == tiny_model(prompt[None])[0, :, -1].argmax().item()


@pytest.mark.parametrize("backend", ["torch", "fast"])
def test_a_prompt_of_many_receptive_fields_primes_with_its_last_one(tiny_model, backend, monkeypatch):
    """Only a prompt's last receptive field reaches the state, so only it is fed (a 14-minute prompt
    made one (B, Q, T) pass of 23 GB and 96 s); each draw is still the inverse-CDF draw from the
    full model's logits over the whole prompt and the codes drawn after it."""
    rf = tiny_model.receptive_field
    prompt = torch.randint(0, 32, (2, 6 * rf + 5), generator=torch.Generator().manual_seed(1))
    fed = []
    step = WaveNet.step

    def counting_step(self, codes, *args, **kwargs):
        fed.append(codes.shape[-1])
        return step(self, codes, *args, **kwargs)

    monkeypatch.setattr(WaveNet, "step", counting_step)
    res = generate(tiny_model, 40, batch_size=2, seed=3, temperature=0.8, prompt=prompt, backend=backend)
    assert fed[0] == rf
    seq = torch.cat([prompt, res.codes], dim=1)
    with torch.no_grad():
        logits = step(tiny_model, seq[:, :-1], tiny_model.init_state(2))[0][:, :, prompt.shape[1] - 1 :]  # every input
    u = torch.rand(40, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cdf = torch.softmax(logits.double().permute(0, 2, 1) / 0.8, dim=-1).cumsum(-1)
    assert torch.equal(res.codes, (cdf < (u.T * cdf[:, :, -1]).unsqueeze(-1)).sum(-1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=torch.rand(10)), "dtype"),
        (dict(prompt=torch.zeros(2, 2, 5, dtype=torch.long)), "shape"),
        (dict(prompt=torch.zeros(4, 5, dtype=torch.long), batch_size=3), "shape"),
        (dict(prompt=torch.full((5,), 99)), r"\[0, 32\)"),
        (dict(batch_size=0), "batch_size"),
        (dict(temperature=-1.0), "temperature"),
        (dict(backend="nope"), "nope"),
    ],
)
def test_generate_rejects_bad_input(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny_model, 10, **kwargs)


def test_generate_bounds_length(tiny_model):
    with pytest.raises(ValueError, match="n_samples"):
        generate(tiny_model, 0)
    with pytest.raises(ValueError, match=str(MAX_SAMPLES)):
        generate(tiny_model, MAX_SAMPLES + 1)


def test_speaker_conditioning_changes_output_and_checks_ids():
    torch.manual_seed(0)
    net = WaveNet(tiny_config(global_cond_classes=3, global_cond_channels=4)).eval()
    codes = torch.randint(0, 32, (2, 20))
    with torch.no_grad():
        a = net(codes, torch.tensor([0, 0]))
        b = net(codes, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        net(codes, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="speaker"):
        net(codes)
    x = generate(net, 40, batch_size=2, seed=0, speaker=1).codes
    assert x.shape == (2, 40)


def test_bad_model_config():
    with pytest.raises(ValueError, match="quantization_channels"):
        WaveNet(tiny_config(quantization_channels=1))
    with pytest.raises(ValueError, match="global conditioning"):
        WaveNet(tiny_config(global_cond_classes=3))


def test_mu_law_round_trip():
    x = torch.linspace(-1, 1, 1001)
    codes = mu_law_encode(x)
    assert codes.dtype == torch.long and codes.min() == 0 and codes.max() == 255
    assert (mu_law_decode(codes) - x).abs().max() < 0.04  # coarsest step near +-1
    assert torch.equal(mu_law_encode(mu_law_decode(codes)), codes)


def test_the_torch_generation_loop_looks_the_speaker_up_once_not_per_sample(monkeypatch):
    """``model.step(..., global_cond=...)`` takes the conditioning computed once: the loop no
    longer checks the ids (a device sync on a GPU) and embeds them for every sample, and the
    samples are those of passing ``speaker`` each step."""
    torch.manual_seed(0)
    model = WaveNet(WaveNetConfig(residual_channels=8, gate_channels=16, skip_channels=8, head_channels=8,
                                  dilations=(1, 2, 4), global_cond_classes=3, global_cond_channels=4)).eval()  # fmt: skip
    lookups = []
    real = WaveNet.speaker_ids
    monkeypatch.setattr(WaveNet, "speaker_ids", lambda self, *a: lookups.append(1) or real(self, *a))
    codes = generate(model, 60, batch_size=2, seed=3, speaker=torch.tensor([2, 0])).codes
    assert len(lookups) <= 3, len(lookups)  # the call's check, the priming step, the loop's one lookup
    state, x = model.init_state(2), torch.zeros(2, 1, dtype=torch.long)
    gc = model.speaker_condition(torch.tensor([2, 0]), 2)
    with torch.no_grad():
        a, _ = model.step(x, state.clone(), torch.tensor([2, 0]))
        b, _ = model.step(x, state.clone(), global_cond=gc)
    assert torch.equal(a, b) and codes.shape == (2, 60)
    with pytest.raises(ValueError, match="speaker or its global_cond, not both"):
        model.step(x, state.clone(), torch.tensor([2, 0]), global_cond=gc)


def test_a_long_mel_is_upsampled_in_pieces_with_the_same_result(monkeypatch):
    """The upsampler ran over a whole mel at once: about 2.7 GB of convolution buffers per two
    minutes of 8 kHz audio (vocode's default limit of 600 s would need some 13 GB). Now it goes
    in pieces of UPSAMPLE_CHUNK_FRAMES frames with their context, and gives the same samples."""
    import wavedil.model as model_mod

    torch.manual_seed(0)
    model = WaveNet(tiny_config(mel={"sample_rate": 8000, "hop_length": 20, "n_fft": 64, "n_mels": 6})).eval()
    with torch.no_grad():
        for p in model.upsampler.parameters():  # away from the near-identity start, which hides seams
            p.copy_(torch.rand_like(p) - 0.5)
    ctx = model.mel_context
    mel = torch.randn(2, 6, 50 + 2 * ctx, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model.upsample(mel)
    widths = []
    forward = type(model.upsampler).forward

    def counting(self, x, crop=0):
        widths.append(x.shape[-1])
        return forward(self, x, crop)

    monkeypatch.setattr(type(model.upsampler), "forward", counting)
    monkeypatch.setattr(model_mod, "UPSAMPLE_CHUNK_FRAMES", 7)
    with torch.no_grad():
        pieces = model.upsample(mel)
    assert widths == [3 + 2 * ctx] * 16 + [2 + 2 * ctx]  # 7 frames over the batch of 2: 3 frames a pass
    assert pieces.shape == whole.shape == (2, 6, 50 * 20) and torch.equal(pieces, whole)

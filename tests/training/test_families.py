"""One contract for every family × conditional/unconditional, plus family-specific math checks."""

from __future__ import annotations

import math

import pytest
import torch

from service.manifest import DatasetSpec
from training.families import build_model
from training.families.flow import FlowModel
from training.families.pixelcnn import PixelCNNModel
from training.families.vae import VAEModel

from ..tiny import CASES, SPEC, TINY, batch, make, steps


@pytest.mark.parametrize(("family", "conditional"), CASES)
def test_contract(family: str, conditional: bool) -> None:
    model = make(family, conditional)
    steps(model, 3)
    x, y = batch()
    yy = y if conditional else None

    # shapes and units of samples
    gen = torch.Generator().manual_seed(7)
    s = model.sample(5, yy[:5] if yy is not None else None, gen)
    assert s.shape == (5, *SPEC.shape) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) <= SPEC.levels - 1

    # finite log-likelihoods where the family admits one
    if model.has_likelihood:
        ll = model.log_likelihood(x, yy, 4)
        assert ll.shape == (8,) and torch.isfinite(ll).all()
    else:
        with pytest.raises(NotImplementedError):
            model.log_likelihood(x, yy)

    # seeded determinism: same seed -> same init, same training, same samples
    twin = make(family, conditional)
    steps(twin, 3)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    s2 = twin.sample(5, yy[:5] if yy is not None else None, torch.Generator().manual_seed(7))
    assert torch.equal(s, s2)
    # ... and other noise gives other output (a barely trained GAN still rounds to one
    # level everywhere, so compare its continuous output)
    if family == "gan":
        from training.families.gan import GANModel

        assert isinstance(twin, GANModel)
        z1, z2 = torch.randn(2, 5, twin.cfg.latent)
        lab = yy[:5] if yy is not None else None
        assert not torch.allclose(twin.generate(z1, lab), twin.generate(z2, lab))
    else:
        other = twin.sample(5, yy[:5] if yy is not None else None, torch.Generator().manual_seed(8))
        assert not torch.equal(s, other)


@pytest.mark.parametrize(("family", "conditional"), CASES)
def test_gradients_reach_every_parameter(family: str, conditional: bool) -> None:
    model = make(family, conditional)
    steps(model, 2)  # zero-initialised output layers block gradients only at step 0
    model.train()
    x, y = batch(seed=11)
    yy = y if conditional else None
    model.zero_grad()
    if family == "gan":
        from training.families.gan import GANModel

        assert isinstance(model, GANModel)
        fake = model.generator(torch.randn(8, model.cfg.latent), model.onehot(yy))
        real = model.to_unit(x.float() + 0.5)
        # Each player's own loss must reach each of its weights.
        d_fake = model.discriminator(model.to_unit(fake.detach()), yy)
        hinge_d = torch.relu(1 - model.discriminator(real, yy)).mean() + torch.relu(1 + d_fake).mean()
        loss = hinge_d - model.discriminator(model.to_unit(fake), yy).mean()
    else:
        loss, _ = model.training_loss(x, yy)
    loss.backward()  # type: ignore[no-untyped-call]
    starved = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    assert not starved


def test_conditional_model_requires_labels_and_labelled_data() -> None:
    model = make("pixelcnn", True)
    x, _ = batch()
    with pytest.raises(ValueError, match="labels are required"):
        model.log_likelihood(x, None)
    unlabelled = DatasetSpec(name="u", shape=(1, 4, 4), levels=5)
    with pytest.raises(ValueError, match=r"needs labels of at least two classes; .u. has no labels"):
        build_model("vae", unlabelled, True, TINY["vae"])


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelcnn_causality(channels: int) -> None:
    """Changing pixel i never changes the logits of pixel i or any pixel before it."""
    spec = DatasetSpec(name="c", shape=(channels, 4, 4), levels=4, label_names=["a", "b"])
    model = make("pixelcnn", True, spec=spec, channels=6, layers=3, dilations=(1, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    assert isinstance(model, PixelCNNModel)
    x, y = batch(1, spec=spec)
    with torch.no_grad():
        base = model.logits(x, y)
    order = [(i, j, c) for i in range(4) for j in range(4) for c in range(channels)]
    reached = 0
    for t, (i, j, c) in enumerate(order):
        x2 = x.clone()
        x2[0, c, i, j] = (x2[0, c, i, j] + 1) % spec.levels
        with torch.no_grad():
            diff = (model.logits(x2, y) - base).abs().amax(dim=-1)[0]  # [C, H, W]
        for t2, (i2, j2, c2) in enumerate(order):
            if t2 <= t:
                assert float(diff[c2, i2, j2]) == 0.0, f"pixel {(i, j, c)} leaks into {(i2, j2, c2)}"
            elif float(diff[c2, i2, j2]) > 0:
                reached += 1
    # and it is not trivially causal: later pixels do depend on earlier ones
    assert reached > len(order)


@pytest.mark.parametrize("coupling", ["affine", "additive", "spline"])
def test_flow_invertible_and_logdet_matches_autograd(coupling: str) -> None:
    model = make("flow", True, coupling=coupling)
    steps(model, 3)
    assert isinstance(model, FlowModel)
    x, y = batch()
    xd = x.float() + torch.rand(x.shape)
    z, _ = model(xd, y)
    assert torch.allclose(model.inverse(z, y), xd, atol=1e-4)
    # log|det J| from the model vs from an autograd Jacobian (float64, one example)
    model.double()
    x1 = xd[:1].double()

    def f(v: torch.Tensor) -> torch.Tensor:
        return model(v.reshape(1, *SPEC.shape), y[:1])[0].reshape(-1)  # type: ignore[no-any-return]

    jac = torch.autograd.functional.jacobian(f, x1.reshape(-1))
    expected = torch.linalg.slogdet(jac)[1]
    with torch.no_grad():
        got = model(x1, y[:1])[1][0]
    assert abs(float(expected - got)) < 1e-6 * max(1.0, abs(float(expected)))


def test_flow_inverse_cache_is_refreshed_on_eval() -> None:
    """Glow's cached inverse weight must never go stale after training steps."""
    model = make("flow", False)
    steps(model, 5)  # leaves the model in eval mode: caches refreshed
    x, _ = batch()
    xd = x.float() + 0.5
    assert isinstance(model, FlowModel)
    assert torch.allclose(model.inverse(model(xd)[0]), xd, atol=1e-4)


def test_iwae_bound_does_not_decrease_with_k() -> None:
    model = make("vae", True)
    steps(model, 20)
    assert isinstance(model, VAEModel)
    x, y = batch(64, seed=3)
    torch.manual_seed(0)
    means, errs = [], []
    for k in (1, 8, 64):
        with torch.no_grad():
            runs = torch.stack([model.log_likelihood(x, y, k).mean() for _ in range(20)])  # [20]
        means.append(float(runs.mean()))
        errs.append(float(runs.std() / 20**0.5))
    # The bound is monotone in expectation; allow three Monte Carlo standard errors of slack.
    for lo, hi in ((0, 1), (1, 2)):
        slack = 3 * (errs[lo] ** 2 + errs[hi] ** 2) ** 0.5 + 1e-4
        assert means[lo] <= means[hi] + slack, (means, errs)
    assert means[0] < means[2], means


def test_vae_importance_weighted_training_optimises_the_evaluation_bound() -> None:
    # At β = 1 the training loss with k samples is the evaluation's IWAE-k estimate, from the
    # same noise, in bits per dimension: one bound, not a look-alike.
    model = make("vae", True, kl_weight=1.0, train_samples=8)
    steps(model, 5)  # past the KL warm-up; leaves eval mode, so steps_seen stays put
    assert isinstance(model, VAEModel)
    x, y = batch(16, seed=4)
    torch.manual_seed(11)
    loss, metrics = model.training_loss(x, y)
    torch.manual_seed(11)
    eps = torch.randn(16, 8, model.cfg.latent)
    with torch.no_grad():
        bound = torch.logsumexp(model.log_weights(x, y, eps), dim=1) - math.log(8)
    assert torch.allclose(loss, -bound.mean() / (16 * math.log(2)), atol=1e-5)
    assert math.isfinite(metrics["elbo_bpd"]) and metrics["kl_bits"] >= 0.0


def test_vae_hybrid_term_trains_the_decoder_not_the_proposal() -> None:
    model = make("vae", True, discriminative_weight=1.0, discriminative_share=0.5)
    steps(model, 3)  # the hybrid term is part of every training step
    assert isinstance(model, VAEModel)
    x, y = batch(8, seed=5)
    model.zero_grad()
    torch.manual_seed(2)
    ce = model.posterior_cross_entropy(x, y, None)
    ce.backward()  # type: ignore[no-untyped-call]
    assert 0.0 < float(ce.detach()) < math.inf
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.decoder.parameters())
    # and it is -log p(y|x) by Bayes' rule over the per-class one-sample ELBOs of the first half
    torch.manual_seed(2)
    xs, ys = x[:4].repeat_interleave(3, dim=0), torch.arange(3).repeat(4)
    with torch.no_grad():
        mu, logvar = model.encode(xs, ys)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(-1)
        log_px = model.decode(z, ys).log_softmax(-1).gather(-1, xs[..., None])[..., 0].flatten(1).sum(1)
        elbo = log_px - kl  # [4*3]
        expected = -torch.log_softmax(elbo.reshape(4, 3), dim=1)[torch.arange(4), y[:4]].mean()
    assert torch.allclose(ce.detach(), expected, atol=1e-4)


def test_marginal_likelihood_and_posterior() -> None:
    model = make("pixelcnn", True)
    steps(model, 3)
    x, _ = batch()
    log_prior = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    with torch.no_grad():
        marginal, post = model.marginal_log_likelihood(x, log_prior)
        per_class = torch.stack([model.log_likelihood(x, torch.full((8,), c)) for c in range(3)], 1)
    assert torch.allclose(marginal, torch.logsumexp(per_class + log_prior, 1), atol=1e-5)
    assert torch.allclose(post.sum(1), torch.ones(8), atol=1e-5)
    assert float(marginal.max()) <= 0.0


def test_bits_per_dim_units() -> None:
    model = make("pixelcnn", False)
    nats = torch.tensor([-16 * math.log(2) * 3.0])
    assert torch.allclose(model.bits_per_dim(nats), torch.tensor([3.0]))

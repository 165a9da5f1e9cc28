"""Phase 2-3: the generator's gradient, the classifier's input space, batched scoring = one-by-one scoring."""

import copy

import pytest
import torch

from rayfed.data.datasets import normalise
from rayfed.fl.gan_audit import (
    AuditGan,
    FoldedEvaluator,
    PixelSpace,
    compute_bias,
    freeze,
    generate_probes,
    generator_loss,
    hypothetical_biases,
    train_fairness_gan,
)
from rayfed.models import CNN, Discriminator, FairnessGenerator, resnet18_cifar

SHAPE = (1, 8, 8)
SPACE = PixelSpace((0.3,), (0.4,))


def _randomise_batchnorm(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    return model


def test_prediction_gap_gradient_reaches_generator_through_frozen_classifier():
    torch.manual_seed(0)
    G, D = FairnessGenerator(16, 10, SHAPE), Discriminator(10, SHAPE)
    classifier = freeze(CNN(SHAPE, 10))
    z, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
    loss = generator_loss(G, D, classifier, z, labels, lambda1=0.0, lambda2=0.0, space=SPACE)
    loss.total.backward()
    # only the first term is active: G's delta network must get a gradient from it
    grads = [p.grad for p in G.delta_net.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in classifier.parameters())  # frozen, not trained


def test_generator_loss_terms_match_formula():
    torch.manual_seed(1)
    G, D = FairnessGenerator(16, 10, SHAPE), Discriminator(10, SHAPE)
    classifier = freeze(CNN(SHAPE, 10))
    G.eval()
    D.eval()
    z, labels = torch.randn(4, 16), torch.randint(0, 10, (4,))
    loss = generator_loss(G, D, classifier, z, labels, lambda1=2.0, lambda2=0.5, space=SPACE)
    x, x_prime = G(z, labels)
    gap = classifier(SPACE.to_classifier(x)) - classifier(SPACE.to_classifier(x_prime))
    with torch.no_grad():
        assert float(loss.prediction_gap) == pytest.approx(-float(gap.pow(2).sum(1).mean()), rel=1e-5)
        assert float(loss.closeness) == pytest.approx(2.0 * float((x - x_prime).pow(2).sum((1, 2, 3)).mean()), rel=1e-5)
        assert float(loss.total) == pytest.approx(float(loss.prediction_gap + loss.closeness + loss.realism), rel=1e-5)


def test_probes_are_in_the_classifier_input_space():
    torch.manual_seed(0)
    G = FairnessGenerator(16, 10, SHAPE)
    x, x_prime = generate_probes(G, 32, SPACE, seed=3, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    z, labels = torch.randn(32, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    with torch.no_grad():
        raw_x, raw_xp = G(z, labels)
    # GAN pixels in [-1, 1] -> [0, 1] -> (p - mean) / std, not the raw [-1, 1] the notebook fed the classifier
    assert torch.allclose(x, normalise((raw_x + 1) / 2, (0.3,), (0.4,)), atol=1e-6)
    assert torch.allclose(x_prime, normalise((raw_xp + 1) / 2, (0.3,), (0.4,)), atol=1e-6)
    assert not torch.allclose(x, raw_x)
    assert torch.allclose(SPACE.to_gan(SPACE.to_classifier(raw_x)), raw_x, atol=1e-6)


class NoGradClassifier(torch.nn.Module):
    """The notebook's defect 1: the classifier called under no_grad, so no gradient reaches G through it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


def _gap_after_training(classifier, epochs=15):
    torch.manual_seed(0)
    real_x, real_y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    gan = AuditGan.create(16, 10, SHAPE, 0.1, 2e-3, torch.device("cpu"), seed=0)
    train_fairness_gan(
        gan, classifier, real_x, real_y, epochs=epochs, lambda1=0.0, lambda2=0.0, batch_size=32, space=SPACE, seed=1
    )
    return gan


def test_gan_training_raises_the_prediction_gap_only_through_the_classifier_gradient():
    """With lambda1 = lambda2 = 0 the prediction-gap term is G's only signal. Trained through the frozen
    classifier, G finds pairs the classifier separates far more than a G trained with the notebook's no_grad
    (whose probes still drift, through G's BatchNorm statistics, so 'the gap grew' alone proves nothing)."""
    torch.manual_seed(0)
    classifier = CNN(SHAPE, 10)
    fresh = AuditGan.create(16, 10, SHAPE, 0.1, 2e-3, torch.device("cpu"), seed=0)
    cpu = torch.device("cpu")
    before = compute_bias(freeze(classifier), *generate_probes(fresh.G, 256, SPACE, 5, cpu))
    ours = compute_bias(classifier, *generate_probes(_gap_after_training(classifier).G, 256, SPACE, 5, cpu))
    notebook = compute_bias(
        classifier, *generate_probes(_gap_after_training(NoGradClassifier(classifier)).G, 256, SPACE, 5, cpu)
    )
    assert ours > 2 * notebook and ours > 2 * before, (before, notebook, ours)


def test_gan_last_batch_of_one_joins_the_previous_batch():
    """An audit split of 33 images in batches of 32 would leave one image, on which BatchNorm cannot train."""
    torch.manual_seed(0)
    classifier = CNN(SHAPE, 10)
    real_x, real_y = torch.randn(33, *SHAPE), torch.randint(0, 10, (33,))
    gan = AuditGan.create(16, 10, SHAPE, 0.1, 2e-3, torch.device("cpu"), seed=0)
    train_fairness_gan(
        gan, classifier, real_x, real_y, epochs=1, lambda1=1.0, lambda2=1.0, batch_size=32, space=SPACE, seed=1
    )  # raised "Expected more than 1 value per channel" before
    assert all(torch.isfinite(p).all() for p in gan.G.parameters())


def test_warm_start_continues_g_and_d():
    """train_audit with a previous round's GAN state continues that G and D (and their Adam states) for
    audit.gan_epochs_warm epochs: equal to continuing them by hand, different from a fresh pair."""
    from rayfed.config import AuditConfig
    from rayfed.fl.round import train_audit
    from rayfed.seeds import Stream, stream_seed

    torch.manual_seed(0)
    classifier = CNN(SHAPE, 10)
    state = copy.deepcopy(classifier.state_dict())
    real_x, real_y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    audit = AuditConfig(latent_dim=16, gan_epochs=2, gan_epochs_warm=1, gan_batch_size=32, warm_start=True)
    kwargs = dict(run_seed=7, round_index=2)
    previous = train_audit(
        classifier, state, real_x, real_y, audit, SPACE, 10, SHAPE, run_seed=7, round_index=1
    ).state_dict()
    warm = train_audit(classifier, state, real_x, real_y, audit, SPACE, 10, SHAPE, gan_state=previous, **kwargs)
    fresh = train_audit(classifier, state, real_x, real_y, audit, SPACE, 10, SHAPE, **kwargs)
    by_hand = AuditGan.create(16, 10, SHAPE, audit.delta_scale, audit.gan_lr, torch.device("cpu"), seed=0)
    by_hand.load_state_dict(previous)
    train_fairness_gan(
        by_hand,
        classifier,
        real_x,
        real_y,
        epochs=1,
        lambda1=audit.lambda1,
        lambda2=audit.lambda2,
        batch_size=32,
        space=SPACE,
        seed=stream_seed(7, Stream.GAN_TRAINING, 2),
    )
    for key, value in warm.G.state_dict().items():
        assert torch.equal(value, by_hand.G.state_dict()[key]), key
    for key, value in warm.D.state_dict().items():
        assert torch.equal(value, by_hand.D.state_dict()[key]), key
    assert not torch.equal(warm.G.state_dict()["delta_net.0.weight"], fresh.G.state_dict()["delta_net.0.weight"])


@pytest.mark.parametrize("score", ["logits", "decisions"])
@pytest.mark.parametrize("build", [lambda: CNN(SHAPE, 10), lambda: resnet18_cifar(SHAPE, 10)])
def test_folded_scoring_equals_scoring_each_model_one_by_one(build, score):
    torch.manual_seed(0)
    model = _randomise_batchnorm(build()).eval()
    state = copy.deepcopy(model.state_dict())
    updates = [
        {k: (0.05 * torch.randn_like(v) if v.is_floating_point() else torch.ones_like(v)) for k, v in state.items()}
        for _ in range(4)
    ]
    x = torch.randn(40, *SHAPE)
    x_prime = x + 0.2 * torch.randn_like(x)
    base, biases = hypothetical_biases(FoldedEvaluator(model), state, updates, x, x_prime, chunk=16, score=score)
    assert base == pytest.approx(compute_bias(model, x, x_prime, score=score), rel=1e-4)
    for update, bias in zip(updates, biases):
        hypothetical = copy.deepcopy(model)  # the notebook's way: deep copy, add, load, evaluate
        hypothetical.load_state_dict({k: v + update[k] for k, v in state.items()})
        assert bias == pytest.approx(compute_bias(hypothetical, x, x_prime, score=score), rel=1e-4)
    if score == "logits":
        assert len(set(round(b, 6) for b in biases)) == len(biases)  # the updates really differ
    else:  # shares of the 40 pairs, not all zero
        assert all(b * 40 == round(b * 40) for b in [base, *biases]) and max(biases) > 0

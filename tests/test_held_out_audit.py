"""The held-out audit: its figures by hand, its perturbations against the specification's generator, and what it
is for: finding a bias planted in a model."""

import pytest
import torch
import torch.nn as nn

from rayfed.config import AuditConfig
from rayfed.data.datasets import denormalise, load_dataset, normalise
from rayfed.fl.gan_audit import AuditGan, PixelSpace
from rayfed.fl.held_out_audit import held_out_audit, matched_epochs, perturb, sensitivity
from rayfed.models import build_classifier
from rayfed.training import sgd, sgd_epochs

CPU = torch.device("cpu")


def test_sensitivity_hand_case():
    """Logits equal to the two inputs: pair 1 moves (1, 0) to (0, 1), L1 2, and flips the class; pairs 2 and 3
    move one logit by 0.5 without flipping. B = (2 + 0.5 + 0.5) / 3 = 1, flip rate 1/3."""
    identity = nn.Linear(2, 2, bias=False)
    identity.weight.data = torch.eye(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    x_prime = torch.tensor([[0.0, 1.0], [0.0, 1.5], [1.5, 0.0]])
    assert sensitivity(identity, x, x_prime) == pytest.approx((1.0, 1 / 3))
    assert sensitivity(identity, x, x_prime, chunk=2) == pytest.approx((1.0, 1 / 3))  # chunks add up the same
    identity.weight.data *= 10  # the same decisions with logits ten times larger
    assert sensitivity(identity, x, x_prime) == pytest.approx((10.0, 1 / 3))  # B grows with them, flips do not


def test_perturbations_are_the_generators_own_deltas_applied_to_real_images():
    """Applied to G's own image x, `perturb` gives G's own x' (the specification's x' = clamp(x + delta(z))) for
    the same z; every perturbed pixel stays within delta_scale of the original in GAN space."""
    shape, space = (1, 8, 8), PixelSpace((0.5,), (0.25,))
    gan = AuditGan.create(16, 10, shape, 0.1, 2e-4, CPU, seed=0)
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(7))
    gan.G.eval()
    with torch.no_grad():
        x_gan, x_prime_gan = gan.G(z, torch.zeros(32, dtype=torch.int64))
    x_prime = perturb(gan, space.to_classifier(x_gan), space, seed=7)
    assert torch.allclose(space.to_gan(x_prime), x_prime_gan, atol=1e-6)
    real = normalise(torch.rand(32, *shape), space.mean, space.std)
    moved = space.to_gan(perturb(gan, real, space, seed=3)) - space.to_gan(real)
    assert moved.abs().max() <= 0.1 + 1e-6 and moved.abs().max() > 0
    assert torch.equal(perturb(gan, real, space, seed=3), perturb(gan, real, space, seed=3))


def test_the_validation_auditor_gets_as_many_gan_steps_as_the_test_auditor():
    """Digits' 449 test images in batches of 64 are 7 steps an epoch (7 x 64 = 448: the last single image joins
    the batch before it), so 5 epochs are 35 steps; over 135 validation images (3 steps an epoch) that takes
    ceil(35 / 3) = 12 epochs, 36 steps; the same split size keeps its epochs; 129 images are 2 steps an epoch
    (again a last single image), so 35 steps take 18 epochs."""
    assert matched_epochs(5, 449, 135, 64) == 12
    assert matched_epochs(5, 449, 449, 64) == 5
    assert matched_epochs(5, 449, 129, 64) == 18


@pytest.fixture(scope="module")
def planted():
    """Two CNNs on digits whose images carry a brightness offset of +-0.025 (in [0, 1] pixels), drawn at random:
    `clean` learns the digits; `shortcut` learns labels that the offset shifts by one (y + 1 for brighter
    images), so its decision hangs on a change of 0.05 per pixel, within reach of the auditor's perturbations
    (delta_scale 0.1 in [-1, 1] is 0.05 in pixels)."""
    torch.manual_seed(0)
    data = load_dataset("digits")

    def offset(x, g):
        sign = torch.randint(0, 2, (len(x),), generator=g) * 2 - 1
        pixels = denormalise(x, data.mean, data.std) + 0.025 * sign.view(-1, 1, 1, 1)
        return normalise(pixels.clamp(0, 1), data.mean, data.std), sign

    train_x, sign = offset(data.train_x, torch.Generator().manual_seed(0))
    labels = {"clean": data.train_y, "shortcut": torch.where(sign > 0, (data.train_y + 1) % 10, data.train_y)}
    models = {}
    for name, y in labels.items():
        model = build_classifier("cnn", data.shape, 10)
        optimizer = sgd(model.parameters(), CPU, lr=0.05, momentum=0.9)
        sgd_epochs(model, optimizer, train_x, y, epochs=15, batch_size=64, seed=1)
        models[name] = model.eval()
    test_x, _ = offset(data.test_x, torch.Generator().manual_seed(1))
    return models, test_x, data


@pytest.mark.parametrize("run_seed", [0, 1])
def test_the_held_out_audit_finds_a_planted_bias_by_its_flip_rate(planted, run_seed):
    """The same auditor (seeds, data, budget) on both models: the shortcut model's decisions flip on many times
    more held-out images (seen here: 16-34% against 0.2-1.1%, with one or two threads, whose float rounding
    trains other models)."""
    models, test_x, data = planted
    space, audit = PixelSpace(data.mean, data.std), AuditConfig()
    found = {
        name: held_out_audit(
            model, model.state_dict(), test_x, data.test_y, audit, space, 10, epochs=2, batch_size=64, run_seed=run_seed
        )
        for name, model in models.items()
    }
    clean, shortcut = found["clean"], found["shortcut"]
    assert clean.images == shortcut.images == len(data.test_y)
    assert shortcut.flip_rate > 5 * clean.flip_rate and shortcut.flip_rate > clean.flip_rate + 0.05, found

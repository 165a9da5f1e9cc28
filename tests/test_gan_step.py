"""The GAN phase's step: one function for the eager and the compiled path, and an audit server's G and D kept
across rounds (re-initialised in place) so that a compiled step is built once per process."""

import copy
from contextlib import contextmanager

import pytest
import torch

from rayfed.config import AuditConfig
from rayfed.fl.gan_audit import AuditGan, PixelSpace, compiled_gan_step, freeze, gan_step, train_fairness_gan
from rayfed.fl.round import train_audit
from rayfed.models import CNN
from rayfed.training import grad_scaler

SHAPE = (1, 8, 8)
SPACE = PixelSpace((0.3,), (0.4,))
CPU = torch.device("cpu")
COMPILED = AuditConfig(gan_step="compiled")
AUDIT_IMAGES = 135
"""The compiled-step tests build the graph that the audit server of tests/test_fl_engine.py's compiled run builds
(the default audit settings, digits' 135-image audit split in one batch, the classifier's CNN, mean and std as
tensors, one thread), so that inductor's on-disk cache serves them its kernels: each new graph is 70-80 s of
C++ compilation on 2 cores. A case that drifts from that run only costs time."""


def _gan(seed: int = 0) -> AuditGan:
    return AuditGan.create(16, 10, SHAPE, 0.1, 2e-3, CPU, seed)


def _batch(n: int = 32, seed: int = 1, latent_dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    z, labels = torch.randn(n, latent_dim, generator=g), torch.randint(0, 10, (n,), generator=g)
    real, real_y = torch.rand(n, *SHAPE, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    return z, labels, real, real_y, torch.arange(n)


def _step(step, gan, classifier, batch, space=SPACE):
    return step(gan, classifier, *batch, lambda1=1.0, lambda2=1.0, space=space, scaler=grad_scaler(CPU))


@contextmanager
def _one_thread():
    """One torch thread, as the audit server of the compiled run has (inductor's CPU kernels depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _weights(gan: AuditGan) -> list[torch.Tensor]:
    return [t.detach().clone() for m in (gan.G, gan.D) for t in m.state_dict().values()]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return freeze(CNN(SHAPE, 10))


def test_restart_gives_the_pair_create_gives_and_a_fresh_adam(classifier):
    """After training, restart(5) must equal create(seed=5): the same initial weights, and Adam's moments and
    step counts back at zero, so the next step moves both pairs identically (with stale moments it would not)."""
    used = _gan(3)
    for seed in (1, 2):
        _step(gan_step, used, classifier, _batch(seed=seed))
    used.restart(5)
    fresh = _gan(5)
    assert all(torch.equal(a, b) for a, b in zip(_weights(used), _weights(fresh)))
    _step(gan_step, used, classifier, _batch(seed=4))
    _step(gan_step, fresh, classifier, _batch(seed=4))
    assert all(torch.equal(a, b) for a, b in zip(_weights(used), _weights(fresh)))


def test_load_state_dict_copies_into_the_same_tensors(classifier):
    """A warm start loads the previous round's snapshot into the pair's own tensors (a compiled step's guards
    hold on them): the optimizer state tensors are the same objects after the load, with the snapshot's values,
    and training on from there equals training on from a pair built from the snapshot."""
    gan = _gan(0)
    for seed in (1, 2):
        _step(gan_step, gan, classifier, _batch(seed=seed))
    snapshot = gan.state_dict()
    _step(gan_step, gan, classifier, _batch(seed=3))
    tensors = {id(v) for s in gan.opt_G.state.values() for v in s.values()}
    gan.load_state_dict(snapshot)
    assert {id(v) for s in gan.opt_G.state.values() for v in s.values()} == tensors
    rebuilt = _gan(9)  # other initial weights: everything must come from the snapshot
    rebuilt.load_state_dict(snapshot)
    for g in (gan, rebuilt):
        _step(gan_step, g, classifier, _batch(seed=3))
    assert all(torch.equal(a, b) for a, b in zip(_weights(gan), _weights(rebuilt)))


def test_compiled_step_computes_the_eager_step(classifier, cpu_compiler):
    """torch.compile's step (inductor's fused CPU kernels) against the eager step from the same pair on the same
    batch, twice (the second step starts from each path's own Adam update, so it checks the compiled update):
    the losses agree to 1e-5 relative (measured: 6.7e-7 at most) and each model's gradients to 1e-2 of their
    norm (measured: 1.7e-6 for G's first step, whose inputs are equal; 1.7e-4 for D's, which sees G after its
    update; 1.5e-3 at the second step). Float rounding does as much on its own: the eager step at two threads
    differs from the eager step at one by 6e-4 at the second step, as rounding moves some unit across a kink
    (a ReLU, LeakyReLU or clamp) and changes its gradient; a missing or wrong term of L_G or of D's loss moves
    the gradients by far more. Parameters are not compared after an update: Adam turns rounding noise in an
    exactly-zero gradient (a convolution bias before BatchNorm) into a full lr step, in either direction, where
    it changes no output."""
    a = COMPILED
    eager, compiled = (AuditGan.create(a.latent_dim, 10, SHAPE, a.delta_scale, a.gan_lr, CPU, 0) for _ in range(2))
    step, space = compiled_gan_step("cpu"), SPACE.on(CPU)
    for seed in (1, 2):
        batch = _batch(AUDIT_IMAGES, seed, a.latent_dim)
        with _one_thread():
            want, got = (
                _step(gan_step, eager, classifier, batch, space),
                _step(step, compiled, classifier, batch, space),
            )
        assert float(got.generator) == pytest.approx(float(want.generator), rel=1e-5)
        assert float(got.discriminator) == pytest.approx(float(want.discriminator), rel=1e-5)
        for model in ("G", "D"):
            grads = [
                torch.cat([p.grad.flatten() for p in getattr(gan, model).parameters()]) for gan in (eager, compiled)
            ]
            assert float((grads[1] - grads[0]).norm() / grads[0].norm()) <= 1e-2, (seed, model)


def test_a_compiled_audit_server_compiles_once_per_process(classifier, cpu_compiler):
    """train_audit with the server's pair re-initialised (a fresh round) or warm-started in place reuses the
    compiled step: with recompiling made an error after the first round, rounds 2 and 3 still run. The control:
    under the same stance a round with a newly built pair fails, so the rounds do run compiled code, and
    keeping the pair is what spares the recompilation (loading optimizer state by replacing its tensors
    would recompile too)."""
    state = copy.deepcopy(classifier.state_dict())
    real_x, real_y = torch.randn(AUDIT_IMAGES, *SHAPE), torch.randint(0, 10, (AUDIT_IMAGES,))
    audit = AuditConfig(**{**COMPILED.__dict__, "gan_epochs": 2, "gan_epochs_warm": 1})
    warm = AuditConfig(**{**audit.__dict__, "warm_start": True})
    args = (classifier, state, real_x, real_y)
    data = (SPACE, 10, SHAPE)
    with _one_thread():
        gan = train_audit(*args, audit, *data, run_seed=7, round_index=1)
    with _one_thread(), torch.compiler.set_stance("fail_on_recompile"):
        gan = train_audit(*args, audit, *data, run_seed=7, round_index=2, gan=gan)
        train_audit(*args, warm, *data, run_seed=7, round_index=3, gan_state=gan.state_dict(), gan=gan)
        with pytest.raises(RuntimeError, match="[Rr]ecompil"):
            train_audit(*args, audit, *data, run_seed=7, round_index=4)


def test_gan_phase_builds_no_tensor_from_python_numbers_per_step(classifier, monkeypatch):
    """No per-step host work in Phase 2: on a GPU a tensor built from Python numbers is a host-to-device copy
    that waits for the GPU, so their count must not grow with the G-and-D steps (12 steps against 4 here). The
    normalisation's mean and std go to the device once a phase (`PixelSpace.on`), not four times a G step."""
    built: list[int] = []
    tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *args, **kwargs: built.append(1) or tensor(*args, **kwargs))
    real_x, real_y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    counts = []
    for epochs in (1, 3):
        built.clear()
        train_fairness_gan(
            _gan(),
            classifier,
            real_x,
            real_y,
            epochs=epochs,
            lambda1=1.0,
            lambda2=1.0,
            batch_size=16,
            space=SPACE,
            seed=0,
        )
        counts.append(len(built))
    assert counts[0] == counts[1], counts


def test_compiled_step_falls_back_to_eager_where_it_cannot_build(classifier, monkeypatch):
    """Without a C++ compiler inductor cannot build CPU kernels: the run warns once, names why, and trains
    exactly as the eager path does."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    real_x, real_y = torch.randn(64, *SHAPE), torch.randint(0, 10, (64,))
    kwargs = dict(epochs=1, lambda1=1.0, lambda2=1.0, batch_size=32, space=SPACE, seed=1)
    fallback, eager = _gan(0), _gan(0)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler '/nonexistent/c\\+\\+'.*run eagerly"):
        train_fairness_gan(fallback, classifier, real_x, real_y, compiled=True, **kwargs)
    train_fairness_gan(eager, classifier, real_x, real_y, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(_weights(fallback), _weights(eager)))

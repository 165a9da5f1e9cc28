"""The minibatch SGD that clients and shards share (`rayfed.training`): the GPU layout (channels-last weights,
fused SGD) computes on the CPU what the plain step computes, and the per-batch sums kept on the device give the
host's sums exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rayfed.data import black_level
from rayfed.fl.metrics import accuracy
from rayfed.fl.round import training_loss
from rayfed.models import build_classifier
from rayfed.training import classifier_smallest_batch, minibatches, on_device, sgd, sgd_epochs, steps_per_epoch

SHAPE = (3, 16, 16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(70, *SHAPE, generator=g), torch.randint(0, 10, (70,), generator=g)


def _trained(data, *, channels_last: bool, fused: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(initial, trained) state of the CNN after two augmented epochs (the last batch of 6 has a joined single)."""
    torch.manual_seed(1)
    model = on_device(build_classifier("cnn", SHAPE, 10), CPU, channels_last=channels_last)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = sgd(model.parameters(), CPU, lr=0.05, momentum=0.9, weight_decay=1e-2, fused=fused)
    pad = black_level((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    sgd_epochs(model, optimizer, *data, epochs=2, batch_size=16, seed=7, augment_pad=pad)
    return initial, model.state_dict()


def test_gpu_layout_on_the_cpu_trains_what_the_plain_step_trains(data):
    """What `on_device` and `sgd` choose on a GPU, run on the CPU from the same weights and draws against NCHW
    weights with torch's default SGD: fused SGD alone within float32 rounding of it (bit-equal on one thread;
    on two, its updates round differently: 2.4e-7 on a running variance of 3.7 after two epochs), and with
    channels-last weights every tensor within 0.2% of how far training moved it (the convolutions sum in
    another order), the 4-D weights really channels-last."""
    initial, plain = _trained(data, channels_last=False, fused=False)
    _, fused = _trained(data, channels_last=False, fused=True)
    _, fast = _trained(data, channels_last=True, fused=True)
    conv_weights = [k for k, v in fast.items() if v.dim() == 4]
    assert conv_weights and all(fast[k].is_contiguous(memory_format=torch.channels_last) for k in conv_weights)
    assert not plain[conv_weights[0]].is_contiguous(memory_format=torch.channels_last)
    for key, value in plain.items():
        torch.testing.assert_close(fused[key], value, rtol=1e-6, atol=1e-7, msg=key)
        if value.is_floating_point():
            moved = float((value - initial[key]).norm())
            assert moved > 0 and float((fast[key] - value).norm()) < 2e-3 * moved, key


def test_loss_and_accuracy_summed_on_the_device_equal_the_per_batch_host_sums(data):
    """F(Theta) and accuracy count on the device (one sync per call); in fp64 and int64 they are bit-equal to
    summing each batch's Python number on the host, as before."""
    x, y = data
    torch.manual_seed(2)
    model = build_classifier("cnn", SHAPE, 10).eval()
    with torch.no_grad():
        logits = [model(x[s : s + 16]) for s in range(0, 70, 16)]
    losses = [float(F.cross_entropy(out, y[s : s + 16], reduction="sum")) for out, s in zip(logits, range(0, 70, 16))]
    hits = [int((out.argmax(1) == y[s : s + 16]).sum()) for out, s in zip(logits, range(0, 70, 16))]
    assert training_loss(model, x, y, batch_size=16) == sum(losses) / 70
    assert accuracy(model, x, y, batch_size=16) == 100.0 * sum(hits) / 70


def test_steps_per_epoch_counts_the_batches_of_an_epoch():
    """q-FFL's automatic L counts the local steps without training: it must agree with `minibatches`, which
    joins a last batch of one sample to the one before it and shares the last two batches evenly where the last
    has fewer than `smallest` (a classifier's: an eighth of the batch)."""
    generator = torch.Generator().manual_seed(0)
    for batch_size in (1, 2, 5, 16, 64):
        for smallest in (2, classifier_smallest_batch(batch_size)):
            for n in range(1, 140):
                batches = minibatches(n, batch_size, generator, CPU, smallest)
                assert steps_per_epoch(n, batch_size) == len(batches), (n, batch_size, smallest)
                assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every sample, once
                assert min(len(b) for b in batches) >= min(n, smallest, batch_size), (n, batch_size, smallest)
    assert [steps_per_epoch(n, 16) for n in (16, 17, 18, 33)] == [1, 1, 2, 2]

    def sizes(n: int, batch_size: int = 64) -> list[int]:
        return [len(b) for b in minibatches(n, batch_size, generator, CPU, classifier_smallest_batch(batch_size))]

    assert [sizes(n) for n in (65, 66, 71, 72, 130)] == [[65], [33, 33], [36, 35], [64, 8], [64, 33, 33]]
    assert sizes(18, 16) == [16, 2]  # 16 // 8 = 2: the clients' default batch keeps a last batch of two


def test_a_classifier_trained_on_epochs_that_end_on_a_few_samples_keeps_usable_batchnorm_statistics():
    """Every BatchNorm updates its running statistics from each batch with the same weight: epochs of the
    digits CNN that end on a batch of 2 (1346 = 21 x 64 + 2) left them so far off that the model scored 25.84%
    on the test images; training now ends those epochs on two batches of 33."""
    from rayfed.data import load_dataset
    from rayfed.sisa.approximate import train_unsharded
    from rayfed.sisa.train import TrainSettings, model_from_state

    data = load_dataset("digits")
    settings = TrainSettings(
        model="cnn", input_shape=data.shape, num_classes=10, epochs=(1,), lr=0.01, momentum=0.9, batch_size=64, seed=42
    )
    state, samples = train_unsharded(settings, 5, data.train_x[:1346], data.train_y[:1346], CPU)
    assert samples == 5 * 1346  # every sample of every epoch
    with torch.no_grad():
        predicted = model_from_state(settings, state)(data.test_x).argmax(1)
    assert (predicted == data.test_y).float().mean() > 0.97

"""The validation split (`data.validation_fraction`): its figures by hand, and through the real engine, where
every `val_*` figure must be what the saved model gives on the validation images. Also config validation that
tests/test_cli.py's bad command lines do not cover: numbers that YAML 1.1 reads as strings."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from rayfed.config import load_config
from rayfed.errors import UserError
from rayfed.fl.metrics import jain_index
from rayfed.fl.round import SharedImages, evaluate_clients
from rayfed.fl.rows import VALIDATION_FIGURES, validation_figures
from rayfed.fl.setup import ClientData, build_federation
from rayfed.models import build_classifier


class FixedClass(nn.Module):
    """Predicts class 0 for every image (the logits do not depend on it)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 2)


def test_numbers_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a number key takes it, from a file and from --set, as the number
    it writes; words (nan, inf) and malformed numbers stay refused."""
    config = tmp_path / "c.yaml"
    config.write_text("fl:\n  lr: 1e-3\naudit:\n  gamma: [1e1, 2.5E-1]\n")
    c = load_config(config, ["audit.gan_lr=+2e-4", "qffl.lipschitz=1e2", "resources.gpus_per_client=5e-1"])
    assert (c.fl.lr, c.audit.gamma, c.audit.gan_lr) == (0.001, [10.0, 0.25], 0.0002)
    assert (c.qffl.lipschitz, c.resources.gpus_per_client) == (100.0, 0.5)
    for text in ("nan", "inf", "1e", "e3", "1e-3x", "1.2.3"):
        with pytest.raises(UserError, match="fl.lr: expected a number"):
            load_config(None, [f"fl.lr={text}"])


def test_validation_figures_hand_case():
    # clients at 50% and 100%: JFI = 150^2 / (2 (50^2 + 100^2)) = 22500 / 25000 = 0.9; worst 50; gap 50
    figures = validation_figures(80.0, [50.0, 100.0])
    assert figures == {"val_accuracy": 80.0, "val_jfi": pytest.approx(0.9), "val_min_accuracy": 50.0, "val_gap": 50.0}
    assert validation_figures(None, [None, None]) == dict.fromkeys(VALIDATION_FIGURES)


def test_each_client_is_scored_on_its_own_rows_of_the_shared_images():
    """Pool labels [0, 1, 0, 0, 1]; the model says 0 everywhere. The rows some client uses are [0, 1, 3, 4]
    (row 2 is nobody's), so they alone are held; client a's rows {0, 1} -> 50%, b's {3, 4, 3} -> 2 of 3, c's {1}
    -> 0%; a repeated row counts twice, as client_test_indices repeats an image when a class runs short."""
    labels = torch.tensor([0, 1, 0, 0, 1])
    pool = (torch.arange(5.0).reshape(5, 1), labels)
    subsets = [np.array([0, 1]), np.array([3, 4, 3]), np.array([1])]
    shared = SharedImages.of(pool, subsets, torch.device("cpu"))
    assert shared.rows.tolist() == [0, 1, 3, 4] and shared.y.tolist() == [0, 1, 0, 1]
    assert shared.client_accuracies(FixedClass(), subsets, batch_size=2) == pytest.approx([50.0, 200 / 3, 0.0])

    clients = [
        ClientData(cid, torch.zeros(2, 1), torch.tensor([0, 1]), np.array([cid]), subset)
        for cid, subset in enumerate(subsets)
    ]
    test = SharedImages.of(pool, [c.test_index for c in clients], torch.device("cpu"))
    evaluations = evaluate_clients(
        FixedClass(),
        FixedClass().state_dict(),
        clients,
        test,
        shared,
        eval_batch_size=2,
        augment_pad=None,
        run_seed=0,
        round_index=1,
    )
    assert [e.train_accuracy for e in evaluations] == [50.0] * 3
    assert [e.test_accuracy for e in evaluations] == [100.0, 0.0, 100.0]  # test rows 0, 1, 2: labels 0, 1, 0
    assert [e.validation_accuracy for e in evaluations] == pytest.approx([50.0, 200 / 3, 0.0])


@pytest.mark.slow
def test_the_engines_validation_figures_are_the_saved_models_on_the_validation_images(ray_session, tmp_path):
    """Two rounds of FedAvg with a validation split: round 2's val_* figures (rounds.parquet) and each client's
    validation accuracy (clients.parquet) recomputed from model_fedavg.pt on the validation images; the
    validation images are in no client's training data, and the test figures are not the validation ones. The
    held-out audit's validation twin (audit.parquet's val_bias, val_flip_rate) is what the validation split's
    auditor gives on them (one thread, as the server runs), seeded apart from the test split's and trained for
    at least as many GAN steps."""
    from rayfed.engine.fl_run import run_fl
    from rayfed.fl.held_out_audit import held_out_audit
    from rayfed.fl.metrics import accuracy
    from rayfed.results import RunDirectory

    overrides = [
        "fl.methods=[fedavg]",
        "data.num_clients=4",
        "fl.rounds=2",
        "fl.local_epochs=1",
        "data.validation_fraction=0.2",
        "data.client_test_size=30",
        "metrics.audit_epochs=1",
        "resources.server_threads=1",  # the held-out audit recomputed below runs on one thread
    ]
    config = load_config(None, overrides)
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.path.mkdir()
    run_fl(config, run_dir)

    federation = build_federation(config)
    validation_x, validation_y = federation.validation
    assert len(validation_y) == round(0.2 * len(federation.data.train_y))
    held = set(federation.split.validation.tolist())
    assert not any(held & set(idx.tolist()) for idx in federation.split.clients)
    model = build_classifier(config.model.name, federation.data.shape, federation.data.num_classes)
    model.load_state_dict(torch.load(run_dir.file("model_fedavg.pt"), weights_only=True))
    predicted = model.eval()(validation_x).argmax(1) == validation_y

    clients = pd.read_parquet(run_dir.file("clients.parquet")).query("round == 2").sort_values("client")
    own = [100.0 * predicted[c.validation_index].float().mean().item() for c in federation.clients]
    assert clients["validation_accuracy"].tolist() == pytest.approx(own, abs=1e-9)
    assert clients["validation_samples"].tolist() == [30] * 4
    [last] = pd.read_parquet(run_dir.file("rounds.parquet")).query("round == 2").to_dict("records")
    assert last["val_accuracy"] == pytest.approx(accuracy(model, validation_x, validation_y))
    assert last["val_min_accuracy"] == pytest.approx(min(own)) and last["val_gap"] == pytest.approx(max(own) - min(own))
    assert last["val_jfi"] == pytest.approx(jain_index(own))
    assert (last["accuracy"], last["min_accuracy"]) != (last["val_accuracy"], last["val_min_accuracy"])
    summary = run_dir.file("summary.md").read_text()
    assert f"A validation split of {len(validation_y)} training images (`data.validation_fraction: 0.2`" in summary
    assert "30-30 per client" in summary

    [audit] = pd.read_parquet(run_dir.file("audit.parquet")).to_dict("records")
    assert (audit["images"], audit["validation_images"]) == (len(federation.data.test_y), len(validation_y))

    def audit_of(x, y, epochs=1, **split):
        return held_out_audit(
            model,
            model.state_dict(),
            x,
            y,
            config.audit,
            federation.space,
            federation.data.num_classes,
            epochs=epochs,
            batch_size=config.metrics.audit_batch_size,
            run_seed=config.seed,
            **split,
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        test = audit_of(federation.data.test_x, federation.data.test_y)
        # 1 epoch over 449 test images in batches of 64 is 7 GAN steps; over 270 validation images 5 an epoch: 2
        validation = audit_of(validation_x, validation_y, epochs=2, split="validation")
        test_seeds = audit_of(validation_x, validation_y)  # the test split's auditor seeds on the validation images
    finally:
        torch.set_num_threads(threads)
    assert (audit["bias"], audit["flip_rate"]) == pytest.approx((test.bias, test.flip_rate), rel=1e-9)
    val = (audit["val_bias"], audit["val_flip_rate"])
    assert val == pytest.approx((validation.bias, validation.flip_rate), rel=1e-9)
    assert audit["val_bias"] != pytest.approx(test_seeds.bias, rel=1e-6)  # an auditor of its own
    assert f"does the same on the {len(validation_y)} validation images for at least as many GAN steps" in summary

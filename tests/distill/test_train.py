"""lana's training loop: its optimizers, a diverging loss, and stage keys that survive new
settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lana.config import FinetuneConfig, TeacherTrainingConfig
from lana.distill.train import Recipe, evaluate, make_optimizer, train_classifier
from lana.errors import LanaError, TrainingDivergedError
from lana.pipeline.keys import section_settings
from tests.conftest import small_sequential_teacher


def _classifier(seed: int = 0) -> nn.Module:
    model = small_sequential_teacher(seed)
    model.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)))
    return model


@pytest.mark.parametrize("optimizer,kind", [("adamw", torch.optim.AdamW),
                                            ("sgd", torch.optim.SGD)])
def test_both_optimizers_train(optimizer: str, kind: type, synthetic_splits) -> None:
    assert isinstance(make_optimizer(optimizer, _classifier().parameters(), 0.1), kind)
    model = _classifier()
    # Batch statistics: after 16 steps the BatchNorm running statistics still lag the
    # weights, so an eval-mode loss moves by chance (AdamW: 1.406 -> 1.411 on one CPU,
    # lower on another) while the loss the optimizer sees falls clearly (-> 1.11).
    first = evaluate(model, synthetic_splits.train, batch_stats=True)["loss"]
    recipe = Recipe(epochs=4, batch_size=32, lr=0.05 if optimizer == "sgd" else 0.01,
                    optimizer=optimizer)
    stats = train_classifier(model, synthetic_splits.train, recipe)
    assert stats["steps"] == 16
    assert evaluate(model, synthetic_splits.train, batch_stats=True)["loss"] < 0.97 * first


def test_the_two_optimizers_give_different_weights(synthetic_splits) -> None:
    weights = []
    for optimizer in ("adamw", "sgd"):
        model = _classifier()
        train_classifier(model, synthetic_splits.train,
                         Recipe(epochs=1, batch_size=32, lr=0.01, optimizer=optimizer))
        weights.append(model[-1][-1].weight.detach().clone())
    assert not torch.allclose(weights[0], weights[1])


def test_a_short_run_reports_its_last_loss(synthetic_splits) -> None:
    stats = train_classifier(_classifier(), synthetic_splits.train,
                             Recipe(epochs=0.5, batch_size=32, lr=0.01))
    assert stats["steps"] == 2 and stats["train_loss"] > 0


def test_a_run_of_exact_steps(synthetic_splits) -> None:
    # 3 steps of 32 whatever the data's size: what a study of training budgets needs.
    stats = train_classifier(_classifier(), synthetic_splits.train,
                             Recipe(steps=3, batch_size=32, lr=0.01))
    assert stats["steps"] == 3
    for kw in ({}, {"epochs": 1.0, "steps": 3}):
        with pytest.raises(TypeError, match="give epochs or steps"):
            Recipe(batch_size=32, lr=0.01, **kw)


def test_recipes_from_config_sections() -> None:
    ft = FinetuneConfig(epochs=3, batch_size=16, lr=0.02, optimizer="sgd", kd_weight=0.5,
                        temperature=4.0)
    assert Recipe.from_config(ft, seed=7) == Recipe(
        epochs=3.0, batch_size=16, lr=0.02, optimizer="sgd", seed=7, kd_weight=0.5,
        temperature=4.0)
    # The teacher trains without KD: its section has no KD settings.
    teacher = Recipe.from_config(TeacherTrainingConfig())
    assert (teacher.kd_weight, teacher.seed, teacher.epochs) == (0.0, 0, 2.0)
    # Overrides replace single fields; steps instead of the section's epochs is refused.
    assert Recipe.from_config(ft, epochs=5.0).epochs == 5.0
    with pytest.raises(TypeError, match="give epochs or steps"):
        Recipe.from_config(ft, steps=10)
    assert Recipe.from_config(ft, epochs=None, steps=10).total_steps(1000) == 10
    assert Recipe.from_config(ft).total_steps(100) == 19  # 3 * 100 / 16, rounded up


def test_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(LanaError, match="'lamb' is not one of: adamw, sgd"):
        make_optimizer("lamb", _classifier().parameters(), 0.1)


def test_a_diverging_loss_stops_with_advice(synthetic_splits) -> None:
    model = _classifier()
    with pytest.raises(TrainingDivergedError) as info:
        train_classifier(model, synthetic_splits.train,
                         Recipe(epochs=8, batch_size=32, lr=1e30), description="teacher")
    msg = str(info.value)
    assert msg.startswith("teacher: the training loss became")
    assert "peak lr 1e+30" in msg and "lower the learning rate" in msg
    step = int(msg.split(" at step ")[1].split()[0])
    assert 1 < step < 32  # caught when it happened, not at the end


@pytest.mark.parametrize("section", [TeacherTrainingConfig, FinetuneConfig])
def test_optimizer_at_its_default_leaves_stage_keys_unchanged(section: type) -> None:
    # Runs cached before the setting existed must resume, not retrain: at the default it
    # is not part of the key; any other value is.
    default = section_settings(section(), {"checkpoint_every"})
    assert "optimizer" not in default
    # (teacher_training.init came later still, with the same rule)
    assert default == section().model_dump(exclude={"checkpoint_every", "optimizer", "init"})
    assert section_settings(section(optimizer="sgd"), {"checkpoint_every"}) == {**default,
                                                                         "optimizer": "sgd"}

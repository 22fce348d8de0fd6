"""Tests of lana.distill.score: replace-one scores against a direct computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lana.distill.score import replace_one_scores
from lana.model.decompose import decompose
from lana.model.zoo import create_model
from tests.conftest import _randomize_bn


class Zeros(nn.Module):
    """A (terrible) candidate that outputs zeros of the layer's output shape."""

    def __init__(self, out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], *self.out_shape)


@pytest.fixture(scope="module")
def effnet_chain():
    torch.manual_seed(0)
    model = _randomize_bn(create_model("lana:tiny_effnet", num_classes=4, in_chans=1), 4)
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)  # random logits of a useful spread
    model.eval()
    return decompose(model, torch.zeros(2, 1, 16, 16)).eval()


def _setup(chain):
    candidates, calls = [], []
    for info in chain.info:
        specs = ["teacher"]
        if info.in_shape == info.out_shape:
            specs.append("identity")
        candidates.append([*specs, "twin", "zeros"])

    def load(i: int, spec: str) -> nn.Module:
        calls.append((i, spec))
        if spec == "identity":
            return nn.Identity()
        if spec == "twin":
            return copy.deepcopy(chain.layers[i])
        return Zeros(chain.info[i].out_shape)

    return candidates, load, calls


def _replaced_logits(chain, i: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    layers = list(chain.layers)
    layers[i] = module
    h = chain.stem(x)
    for layer in layers:
        h = layer(h)
    return chain.head(h)


@pytest.mark.parametrize("metric", ["ce", "kl"])
def test_scores_match_direct_computation(effnet_chain, synthetic_splits, metric: str) -> None:
    chain = effnet_chain
    data = synthetic_splits.val  # 32 images, scored in uneven batches of 10
    candidates, load, calls = _setup(chain)
    res = replace_one_scores(chain, candidates, load, data, metric=metric, batch_size=10)
    # every candidate is loaded once (not once per batch); the teacher op is never loaded
    assert sorted(calls) == sorted((i, s) for i, specs in enumerate(candidates)
                                   for s in specs if s != "teacher")
    x, y = next(data.batches(len(data)))
    with torch.no_grad():
        t_logits = chain(x)

        def loss(logits):
            if metric == "kl":
                return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t_logits, 1),
                                log_target=True, reduction="batchmean").item()
            return F.cross_entropy(logits, y).item()

        teacher_loss = loss(t_logits)
        assert res["metric"] == metric and res["samples"] == len(data) == 32
        assert res["teacher_loss"] == pytest.approx(teacher_loss, abs=1e-5)
        acc = (t_logits.argmax(1) == y).float().mean().item()
        assert res["teacher_accuracy"] == pytest.approx(acc)
        assert len(res["scores"]) == len(candidates)
        for i, specs in enumerate(candidates):
            row = res["scores"][i]
            assert len(row) == len(specs)
            for j, spec in enumerate(specs):
                if spec == "teacher":
                    assert row[j] == 0.0
                    continue
                if spec == "twin":
                    assert abs(row[j]) < 1e-5
                    continue
                module = nn.Identity() if spec == "identity" else Zeros(chain.info[i].out_shape)
                expected = loss(_replaced_logits(chain, i, module, x)) - teacher_loss
                assert row[j] == pytest.approx(expected, abs=1e-4), (i, spec)
    if metric == "kl":
        assert res["teacher_loss"] == pytest.approx(0.0, abs=1e-6)
        assert all(a >= -1e-6 for row in res["scores"] for a in row)
        # zeroing the last layer changes the outputs: a strictly positive KL
        assert res["scores"][-1][candidates[-1].index("zeros")] > 1e-3


def test_scores_do_not_depend_on_batch_size(effnet_chain, synthetic_splits) -> None:
    candidates, load, _ = _setup(effnet_chain)
    a = replace_one_scores(effnet_chain, candidates, load, synthetic_splits.val, batch_size=7)
    b = replace_one_scores(effnet_chain, candidates, load, synthetic_splits.val, batch_size=64)
    assert a["teacher_loss"] == pytest.approx(b["teacher_loss"], rel=1e-5)
    for ra, rb in zip(a["scores"], b["scores"], strict=True):
        assert ra == pytest.approx(rb, abs=1e-4)

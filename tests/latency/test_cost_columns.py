"""Several cost columns in library.json (extra latency backends, params, FLOPs) and
bounds on them in the pipeline's search."""

from __future__ import annotations

import pytest

from lana.config import BudgetConfig, LatencyConfig, config_from_dict, extra_columns
from lana.errors import BackendUnavailableError, ConfigError
from lana.latency.profile import static_costs
from lana.pipeline.runner import Run


def test_extra_columns_parse() -> None:
    cols = extra_columns(LatencyConfig(extra=["torch", "onnxruntime@b4"], threads=2))
    assert list(cols) == ["latency_ms@torch", "latency_ms@onnxruntime@b4"]
    assert cols["latency_ms@torch"].backend == "torch"
    assert cols["latency_ms@onnxruntime@b4"].batch_size == 4
    assert all(c.threads == 2 and c.extra == [] for c in cols.values())


@pytest.mark.parametrize("entry,error", [("torch@32", ConfigError),
                                         ("torch@b0", ConfigError),
                                         ("nosuch", BackendUnavailableError)])
def test_bad_extra_columns_fail_at_config_time(tiny_config, entry, error) -> None:
    tiny_config["latency"]["extra"] = [entry]
    with pytest.raises(error):
        config_from_dict(tiny_config)


def test_bad_extra_budget_fails_at_config_time(tiny_config) -> None:
    tiny_config["search"]["extra_budgets"] = ["params<2e6"]
    with pytest.raises(ConfigError, match="only '<=' and '>='"):
        config_from_dict(tiny_config)


def test_static_costs(seq_chain) -> None:
    cands = [["teacher", "identity"]] + [["teacher"]] * (len(seq_chain.layers) - 1)
    c = static_costs(seq_chain, cands, build=None, input_shape=(1, 16, 16))
    first = seq_chain.layers[0]
    assert c["layers"][0][0]["params"] == sum(p.numel() for p in first.parameters())
    assert c["layers"][0][1] == {"params": 0.0, "flops": 0.0}
    # conv 1->8, 3x3, stride 2 on 16x16: 8x8 outputs x 8 channels x 9 MACs x 2
    assert c["layers"][0][0]["flops"] == pytest.approx(8 * 8 * 8 * 9 * 2)


def test_library_columns_and_extra_budget(run_copy) -> None:
    run_dir, cfg = run_copy
    cfg["latency"]["extra"] = ["torch"]
    run = Run(run_dir, config_from_dict(cfg))
    lib = run.library()
    op = lib["layers"][0]["ops"][0]
    assert set(op["cost"]) == {"latency_ms", "latency_ms@torch", "params", "flops"}
    assert set(lib["fixed_cost"]) == set(op["cost"])
    assert all(o["cost"]["latency_ms@torch"] > 0 for layer in lib["layers"]
               for o in layer["ops"] if o["spec"] != "identity")
    teacher_params = lib["fixed_cost"]["params"] + sum(
        next(o["cost"]["params"] for o in layer["ops"] if o["spec"] == "teacher")
        for layer in lib["layers"])
    bound = 0.8 * teacher_params
    cfg["search"]["extra_budgets"] = [f"params<={bound}"]
    run = Run(run_dir, config_from_dict(cfg))
    res = run.search(BudgetConfig(speedup=1.1))
    by_layer = {layer["name"]: {o["spec"]: o["cost"]["params"] for o in layer["ops"]}
                for layer in lib["layers"]}
    for attempt in res["attempts"]:
        for student in attempt["students"]:
            total = lib["fixed_cost"]["params"] + sum(
                by_layer[name][spec] for name, spec in zip(by_layer, student["choices"],
                                                           strict=True))
            assert total <= bound * (1 + 1e-9)

"""``lana demo``: the whole method on real data in minutes on a laptop-class CPU.

Data: Fashion-MNIST (Debian package ``dataset-fashion-mnist``) at 32 px. Teacher:
``lana:tiny_effnet`` (an EfficientNet-style network from timm's builder), trained by lana
and cached in ``~/.cache/lana/teachers``. Budget: 2x faster than the teacher on ONNX
Runtime, batch 1, one thread.
"""

from __future__ import annotations

from pathlib import Path

from lana.config import BudgetConfig, Config, config_from_dict, with_changes

DEMO_CONFIG: dict = {
    "seed": 0,
    "model": {"name": "lana:tiny_effnet"},
    "data": {"name": "fashion-mnist", "image_size": 32, "train_samples": 12000,
             "val_samples": 2000},
    "teacher_training": {"epochs": 3, "batch_size": 128, "lr": 4e-3},
    "distill": {"steps": 50, "batch_size": 64, "lr": 3e-3},
    "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1,
                "max_seconds": 0.1, "warmup": 5},
    "score": {"metric": "ce", "samples": 256},
    "search": {"budget": {"speedup": 2.0}, "k": 6, "eval_samples": 512},
    "finetune": {"epochs": 3, "batch_size": 128, "lr": 2e-3, "kd_weight": 1.0},
}


def demo_config() -> Config:
    """The validated demo configuration (also a template for your own config)."""
    return config_from_dict(DEMO_CONFIG, "demo config")


def demo(out: str | Path = "lana-demo", budget: BudgetConfig | None = None,
         device: str | None = None) -> dict:
    """Run the demo into ``out`` (resumable), print teacher vs student and write the report.

    ``device`` (auto, cpu, cuda, cuda:N) is where it trains; default: the config's (auto).
    """
    from lana.pipeline.runner import Run
    from lana.report.html import write_report
    from lana.report.terminal import print_summary

    cfg = demo_config()
    if device is not None:
        cfg = with_changes(cfg, "--device", device=device)
    summary = Run(out, cfg).all(budget)
    print_summary(summary)
    print(f"report: {write_report(out)}")
    return summary

"""What a scale-consistency view costs a training step (``--sections views``).

The default run's wall time sits near the issue's 1.1x budget, and what a view costs is not its
pixels: small convolutions use a CPU's cores less well, so a 0.6x view (0.36 of the pixels) costs
more than a third of a step. This section times resflex's real training step (Lightning, the
module's own term) with a view on every step against the same step without one, for each view
factor and each share of the batch the view takes (``model.scale_consistency_share``), and from
those the extra cost of the default's draw. Nothing in timm or Lightning measures this.

Four cells (factors 0.6x, 1.4x at shares 1 and 0.5), each ``repeats`` runs of both sides: about
2 minutes on 2 CPU cores at the CPU defaults (resnet18, 64 px, batch 32; 109 s in
experiments/robustness/views_cpu.json, over 3 minutes under load), about 20 s with ``--quick``
(a toy model, fewer steps). The command line prints one line per cell with the elapsed time.
"""

from __future__ import annotations

import inspect
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.runners import Batch, Setup, Window, build_module, lightning_windows, random_batch
from resflex.training.module import ClassificationModule

_DEFAULTS = inspect.signature(ClassificationModule.__init__).parameters
#: the default draw (the module's defaults, as configs/model/classifier.yaml): one factor a view step
DEFAULT_FACTORS = tuple(_DEFAULTS["scale_consistency_factors"].default)
DEFAULT_PROB = float(_DEFAULTS["scale_consistency_prob"].default)
DEFAULT_WEIGHT = float(_DEFAULTS["scale_consistency"].default)


def _median_rate(windows: list[Window]) -> float:
    return float(statistics.median(w.images_per_sec for w in windows))


def views(
    setup: Setup,
    model: Any,
    size: int,
    warmup: int,
    steps: int,
    repeats: int,
    windows: int = 1,
    factors: Sequence[float] = (0.6, 1.4),
    shares: Sequence[float] = (1.0, 0.5),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per (factor, share): a step with that view on every step over one without, as a ratio of step
    times (medians over alternating repeats); then the default draw's expected extra step time,
    ``prob * mean(cost - 1)`` over its factors, per share. ``progress`` gets one line per measured
    cell (the command line prints it with the elapsed time: a cell is a minute or more on a CPU)."""
    batches: list[Batch] = [
        random_batch(setup.batch_size, (size, size), setup.num_classes, i) for i in range(4)
    ]
    seq = [batches[i % len(batches)] for i in range(warmup + steps * windows)]
    plain = build_module(setup, model, scale_consistency=0.0)
    cost: dict[str, dict[str, float]] = {}
    plain_rates: list[float] = []
    for share in shares:
        for factor in factors:
            with_view = build_module(
                setup,
                model,
                scale_consistency=DEFAULT_WEIGHT,
                scale_consistency_factors=[factor],
                scale_consistency_prob=1.0,  # a view on every step
                scale_consistency_share=share,
            )
            base: list[Window] = []
            view: list[Window] = []
            for r in range(repeats):  # A B B A ...: a drifting load hits both sides
                pair = [(base, plain), (view, with_view)]
                for sink, module in pair if r % 2 == 0 else pair[::-1]:
                    sink += lightning_windows(setup, module, seq, warmup, steps, windows)
            plain_rates.append(_median_rate(base))
            ratio = round(_median_rate(base) / _median_rate(view), 3)
            cost.setdefault(f"share {share:g}", {})[f"{factor:g}x"] = ratio
            if progress is not None:
                done = sum(len(per) for per in cost.values())
                progress(
                    f"views cell {done}/{len(shares) * len(factors)}: share {share:g}, "
                    f"{factor:g}x view, step time {ratio:.2f}x the plain step"
                )
    draw = {
        key: round(DEFAULT_PROB * statistics.mean(per[f"{f:g}x"] - 1 for f in DEFAULT_FACTORS), 4)
        for key, per in cost.items()
        if all(f"{f:g}x" in per for f in DEFAULT_FACTORS)
    }
    return {
        "size": size,
        "batch_size": setup.batch_size,
        # the step without a view, seconds (median over the pairs): what the ratios multiply
        "plain_step_s": round(setup.batch_size / statistics.median(plain_rates), 4),
        "step_cost": cost,
        "default_draw": {"factors": list(DEFAULT_FACTORS), "prob": DEFAULT_PROB, "extra_step_time": draw},
    }


def render(record: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"6 scale-consistency views @{record['size']} px, batch {record['batch_size']}: "
        f"a step with the view / without (step time; without: {record['plain_step_s']:.3f} s)",
    ]
    for share, per in record["step_cost"].items():
        costs = ", ".join(f"{factor} view {ratio:.2f}" for factor, ratio in per.items())
        extra = record["default_draw"]["extra_step_time"].get(share)
        tail = f"; the default draw +{extra:.1%} step time" if extra is not None else ""
        lines.append(f"  {share}: {costs}{tail}")
    return lines

"""Each speed switch must leave the numbers alone: channels_last (fast) and torch.compile (slow)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from resflex.models.backbone import TimmBackbone
from resflex.models.classifier import ImageClassifier
from resflex.models.pooling import AvgPool
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory


def _classifier(seed: int = 0) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(TimmBackbone("test_resnet"), AvgPool(), num_classes=10)


def _module(model: ImageClassifier, **kwargs: object) -> ClassificationModule:
    return ClassificationModule(model, optimizer=OptimizerFactory("adamw", lr=1e-3), **kwargs)


def _batch(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(4)


def test_channels_last_gives_the_same_logits_and_gradients() -> None:
    model = _classifier()
    dense = _module(copy.deepcopy(model), channels_last=False)
    nhwc = _module(copy.deepcopy(model), channels_last=True)
    images, labels = _batch(40)
    x_dense, _ = dense.on_after_batch_transfer((images, labels), 0)
    x_nhwc, _ = nhwc.on_after_batch_transfer((images, labels), 0)
    assert x_nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not x_dense.is_contiguous(memory_format=torch.channels_last)
    losses = []
    for module, x in ((dense, x_dense), (nhwc, x_nhwc)):
        module.train()
        loss = F.cross_entropy(module(x), labels)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(dense.model.parameters(), nhwc.model.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)


def test_compile_is_off_by_default_and_configure_model_leaves_eager_alone() -> None:
    module = _module(_classifier())
    module.configure_model()
    assert getattr(module.model, "_compiled_call_impl", None) is None


@pytest.mark.slow
def test_compiled_and_eager_give_the_same_loss_at_several_sizes() -> None:
    """model.compile=true: same loss and gradients as eager at every size; a size seen before
    never compiles again (so a multi-resolution run compiles at most once per size and mode).

    Not asserted: one symbolic graph for all sizes. With torch 2.14 on CPU, Inductor's graphs
    guard on the final feature map's size (e.g. ``((h - 1) // 32) ...  == 3``), so each new size
    compiles once (measured in experiments/performance/README.md).
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = _classifier()
    eager = _module(copy.deepcopy(model))
    compiled = _module(copy.deepcopy(model), compile=True)
    compiled.configure_model()
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    keys = set(compiled.state_dict())
    assert keys == set(eager.state_dict()), "compiling in place must keep checkpoint keys"
    graphs_after: list[int] = []
    sizes = (32, 64, 96, 32)
    for size in sizes:
        images, labels = _batch(size, seed=size)
        out = []
        for module in (eager, compiled):
            module.train()
            module.zero_grad(set_to_none=True)
            x, y = module.on_after_batch_transfer((images, labels), 0)
            loss = F.cross_entropy(module(x), y, label_smoothing=0.1)
            loss.backward()
            out.append((loss.detach(), [p.grad.clone() for p in module.model.parameters()]))
        torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-4, atol=1e-4)
        for a, b in zip(out[0][1], out[1][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        graphs_after.append(int(counters["stats"]["unique_graphs"]))
    assert graphs_after[-1] == graphs_after[-2], f"a size seen before was compiled again: {graphs_after}"
    assert graphs_after[-1] <= len(set(sizes)), graphs_after

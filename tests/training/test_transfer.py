"""Transfer learning: safe loading, init_from, head re-init, freezing, LR groups, ViT resolution change."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from resflex.data.datamodule import ResflexDataModule
from resflex.data.datasets import SyntheticSource
from resflex.data.resolution import FixedResolution
from resflex.errors import ConfigError, DataError
from resflex.models.backbone import TimmBackbone
from resflex.models.checkpoint import init_head_from_checkpoint, safe_load
from resflex.models.classifier import ImageClassifier
from resflex.models.pooling import AvgPool, GeMPool
from resflex.training.finetune import Finetuning
from resflex.training.lr_schedule import LrFactor, WarmupCosine
from resflex.training.module import ClassificationModule
from resflex.training.optim import OptimizerFactory
from resflex.training.param_groups import (
    FinetuneSpec,
    apply_lr_mults,
    backbone_stages,
    build_param_groups,
    unfreeze_epochs,
)
from tests.conftest import REPO

TINY_NET = "test_resnet"


def make_module(num_classes: int = 10, finetune: dict | None = None, pooling=None, **backbone_kwargs):
    backbone = TimmBackbone(TINY_NET, **backbone_kwargs)
    model = ImageClassifier(backbone, pooling or AvgPool(), num_classes=num_classes)
    init_head_from_checkpoint(model)
    optimizer = OptimizerFactory("adamw", lr=0.01, weight_decay=0.05)
    return ClassificationModule(model, optimizer, WarmupCosine(warmup_epochs=0.0), finetune=finetune)


def tiny_data(num_train: int = 32) -> ResflexDataModule:
    source = SyntheticSource(num_train=num_train, num_val=8, num_test=0, min_side=24, max_side=40)
    return ResflexDataModule(source, FixedResolution(32), batch_size=8, num_workers=0, seed=0)


def fit(module, callbacks, max_epochs: int = 1, batches: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=batches,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=tiny_data())
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory) -> Path:
    """A real resflex Lightning checkpoint (10 classes, GeM pooling) after a few optimizer steps."""
    torch.manual_seed(0)
    module = make_module(num_classes=10, pooling=GeMPool())
    trainer = fit(module, [Finetuning("full")], batches=2)
    path = tmp_path_factory.mktemp("src") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def source_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---- safe loading ---------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs a shell command: exactly what a hostile .ckpt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "hacked"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"model.backbone.model.conv1.weight": torch.zeros(1)}, "x": Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match="refusing to load") as info:
        safe_load(path)
    assert "\n" not in info.value.one_line()
    with pytest.raises(DataError, match="refusing to load"):
        TimmBackbone(TINY_NET, init_from=str(path))
    with pytest.raises(DataError, match="refusing to load"):
        TimmBackbone(TINY_NET, weights=str(path))
    assert not marker.exists(), "the pickled command ran"


def test_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        TimmBackbone(TINY_NET, init_from=str(tmp_path / "nope.ckpt"))
    assert "nope.ckpt" in info.value.one_line()
    with pytest.raises(DataError, match="not found"):
        TimmBackbone(TINY_NET, weights=str(tmp_path / "nope.safetensors"))


def test_weights_and_init_from_together_are_rejected(source_ckpt: Path) -> None:
    with pytest.raises(ConfigError, match="both set"):
        TimmBackbone(TINY_NET, weights=str(source_ckpt), init_from=str(source_ckpt))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_and_drops_the_timm_classifier(tmp_path: Path, suffix: str, caplog) -> None:
    import timm

    torch.manual_seed(1)
    reference = timm.create_model(TINY_NET, num_classes=7)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="resflex"):
        backbone = TimmBackbone(TINY_NET, weights=str(path))
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    got = backbone.model.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    line = next(r.getMessage() for r in caplog.records if "backbone.weights" in r.getMessage())
    assert f"loaded {len(expected)}/{len(expected)} tensors" in line and "fc.weight" in line


def test_weights_file_of_another_architecture_is_an_error(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    with pytest.raises(ConfigError, match="no tensor"):
        TimmBackbone(TINY_NET, weights=str(path))


# ---- init_from ----------------------------------------------------------------------------------------
def test_init_from_loads_backbone_tensors_equal_to_the_source(source_ckpt: Path, caplog) -> None:
    source = source_state(source_ckpt)
    with caplog.at_level(logging.INFO, logger="resflex"):
        module = make_module(num_classes=10, init_from=str(source_ckpt))
    backbone = module.model.backbone.model.state_dict()
    assert backbone, "empty backbone"
    for name, tensor in backbone.items():
        assert torch.equal(tensor, source["model.backbone.model." + name]), name
    summary = [r.getMessage() for r in caplog.records if "backbone.init_from" in r.getMessage()]
    assert len(summary) == 1 and f"loaded {len(backbone)}/{len(backbone)} tensors" in summary[0]
    assert "missing (kept as initialised): none" in summary[0]
    # init_head=false (the default): the head is not the source's
    assert not torch.equal(module.model.head.weight, source["model.head.weight"])


def test_init_from_a_run_folder_is_its_best_checkpoint(source_ckpt: Path, tmp_path: Path) -> None:
    """backbone.init_from=RUN (as for load_classifier): the best checkpoint metrics.json names."""
    import json
    import shutil

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(source_ckpt, run / "checkpoints" / "best-epoch000-acc0.5.ckpt")
    other = torch.load(source_ckpt, map_location="cpu", weights_only=True)
    other["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    torch.save(other, run / "checkpoints" / "last.ckpt")  # later weights: not the ones loaded
    best = {"val/acc": 0.5, "monitor": "val/acc", "checkpoint": "/x/checkpoints/best-epoch000-acc0.5.ckpt"}
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "best": best, "metrics": {}}))
    from resflex.preflight import check_before_work
    from tests.test_configs import compose_train

    cfg = compose_train([f"backbone.name={TINY_NET}", f"backbone.init_from={run}"], tmp_path / "out")
    check_before_work(cfg)  # the run's first step: the folder becomes the file it stands for
    assert Path(cfg.backbone.init_from) == run / "checkpoints" / "best-epoch000-acc0.5.ckpt"
    module = make_module(num_classes=10, init_from=cfg.backbone.init_from)
    source = source_state(source_ckpt)
    for name, tensor in module.model.backbone.model.state_dict().items():
        assert torch.equal(tensor, source["model.backbone.model." + name]), name
    with pytest.raises(DataError, match="is a folder"):  # below the run: a file, as the key says
        TimmBackbone(TINY_NET, init_from=str(run))


def test_init_head_loads_pooling_and_head_when_classes_match(source_ckpt: Path) -> None:
    source = source_state(source_ckpt)
    module = make_module(num_classes=10, pooling=GeMPool(), init_from=str(source_ckpt), init_head=True)
    assert torch.equal(module.model.head.weight, source["model.head.weight"])
    assert torch.equal(module.model.head.bias, source["model.head.bias"])
    assert torch.equal(module.model.pooling.p, source["model.pooling.p"])


def test_class_count_change_reinitialises_the_head_only(source_ckpt: Path, caplog) -> None:
    source = source_state(source_ckpt)
    torch.manual_seed(123)
    fresh = make_module(num_classes=4, pooling=GeMPool())
    torch.manual_seed(123)
    with caplog.at_level(logging.INFO, logger="resflex"):
        module = make_module(num_classes=4, pooling=GeMPool(), init_from=str(source_ckpt), init_head=True)
    # backbone and pooling: the source's
    for name, tensor in module.model.backbone.model.state_dict().items():
        assert torch.equal(tensor, source["model.backbone.model." + name]), name
    assert torch.equal(module.model.pooling.p, source["model.pooling.p"])
    # head: a fresh 4-class layer, exactly what the same seed gives without init_from
    assert module.model.head.weight.shape == (4, module.model.num_features)
    assert torch.equal(module.model.head.weight, fresh.model.head.weight)
    assert torch.equal(module.model.head.bias, fresh.model.head.bias)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "re-initialised: the checkpoint has 10 classes, this run has 4" in messages


def test_init_from_a_plain_weights_file_is_an_error(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "plain.pth"
    torch.save(timm.create_model(TINY_NET, num_classes=0).state_dict(), path)
    with pytest.raises(DataError, match="not a resflex checkpoint"):
        TimmBackbone(TINY_NET, init_from=str(path))


def test_vit_preset_changes_resolution_after_init_from(tmp_path: Path) -> None:
    """The vit_small_patch16 preset (dynamic_img_size) runs at sizes it was not pre-trained at."""
    preset = OmegaConf.load(REPO / "configs" / "backbone" / "vit_small_patch16.yaml")
    torch.manual_seed(0)
    source = instantiate(preset)
    path = tmp_path / "vit.ckpt"
    torch.save(
        {"state_dict": {"model.backbone.model." + k: v for k, v in source.model.state_dict().items()}}, path
    )
    preset.init_from = str(path)
    torch.manual_seed(1)
    target = instantiate(preset).eval()
    source.eval()
    for h, w in ((64, 64), (48, 80), (72, 72)):  # 72: not a multiple of 16 (dynamic_img_pad)
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            out = target(x)
            ref = source(x)
        assert out.shape[:2] == (1, source.num_features) and out.shape[-2:] == (-(-h // 16), -(-w // 16))
        assert torch.allclose(out, ref, atol=1e-5)


# ---- strategies -----------------------------------------------------------------------------------------
def test_finetune_spec_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown finetune 'probe'"):
        FinetuneSpec.from_config({"name": "probe"})
    with pytest.raises(ConfigError, match="layer_decay"):
        FinetuneSpec.from_config({"name": "full", "layer_decay": 1.5})
    with pytest.raises(ConfigError, match="unfreeze_at_epochs"):
        FinetuneSpec.from_config({"name": "gradual", "unfreeze_at_epochs": []})
    with pytest.raises(ConfigError, match="unknown finetune key"):
        FinetuneSpec.from_config({"name": "full", "backbone_lr": 0.1})


def test_gradual_with_more_epochs_than_stages_is_refused() -> None:
    """Every entry of unfreeze_at_epochs unfreezes a chunk: one more than there are stages would be empty."""
    backbone = make_module().model.backbone.model
    stages = len(backbone_stages(backbone))
    spec = FinetuneSpec.from_config({"name": "gradual", "unfreeze_at_epochs": list(range(1, stages + 1))})
    assert set(unfreeze_epochs(backbone, spec).values()) == set(range(1, stages + 1))  # one stage each
    too_many = FinetuneSpec.from_config({"name": "gradual", "unfreeze_at_epochs": list(range(1, stages + 2))})
    with pytest.raises(ConfigError, match=f"backbone has only {stages} stages"):
        unfreeze_epochs(backbone, too_many)


def test_lr_groups_have_the_configured_rates() -> None:
    module = make_module(finetune={"name": "full", "backbone_lr_mult": 0.1})
    groups = build_param_groups(module.model, 0.05, module.finetune)
    optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.05)
    apply_lr_mults(optimizer)
    head_ids = {id(p) for p in (*module.model.head.parameters(), *module.model.pooling.parameters())}
    backbone_ids = {id(p) for p in module.model.backbone.parameters()}
    seen = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        if ids <= head_ids:
            assert group["lr"] == pytest.approx(0.01), group["name"]
        else:
            assert ids <= backbone_ids
            assert group["lr"] == pytest.approx(0.001), group["name"]
        # no weight decay on biases / norm weights
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 0.05)
    assert seen == head_ids | backbone_ids  # every parameter trains, exactly once

    decayed = make_module(finetune={"name": "full", "backbone_lr_mult": 0.1, "layer_decay": 0.5})
    groups = build_param_groups(decayed.model, 0.05, decayed.finetune)
    optimizer = torch.optim.AdamW(groups, lr=0.01)
    apply_lr_mults(optimizer)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    backbone = decayed.model.backbone.model
    named = dict(backbone.named_parameters())
    top = lr_of[id(named[[n for n in named if n.startswith("layer4")][-1]])]
    stem = lr_of[id(named["conv1.0.weight"])]
    assert top == pytest.approx(0.001)  # the last layer: backbone_lr_mult only
    from timm.models import group_parameters

    depth = max(group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True).values())
    assert stem == pytest.approx(0.001 * 0.5**depth)  # each layer below: x0.5
    assert lr_of[id(decayed.model.head.weight)] == pytest.approx(0.01)


def test_lr_factor_warmup_cosine_and_unfreeze_ramp() -> None:
    base = LrFactor(total_steps=100, warmup_steps=10, min_lr_ratio=0.0)
    assert (
        base(0) == pytest.approx(0.01) and base(10) == pytest.approx(1.0) and base(100) == pytest.approx(0.0)
    )
    late = LrFactor(total_steps=100, warmup_steps=10, min_lr_ratio=0.0, start_step=40, ramp_steps=10)
    assert late(39) == 0.0
    assert late(40) == pytest.approx(0.1 * base(40))
    assert late(49) == pytest.approx(base(49))


class Recorder(pl.Callback):
    """Snapshots of the backbone at each epoch end, and the LRs seen at each step."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.lrs: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(snapshot(pl_module.model.backbone.model))


def test_linear_probe_backbone_is_really_frozen() -> None:
    torch.manual_seed(0)
    module = make_module(finetune={"name": "linear_probe"})
    before = snapshot(module.model.backbone.model)
    head_before = module.model.head.weight.detach().clone()
    assert any("running_mean" in k for k in before)
    fit(module, [Finetuning("linear_probe")], max_epochs=2, batches=3)  # validation in between epochs
    after = module.model.backbone.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []  # weights, BN running stats and num_batches_tracked: bit-identical
    assert not torch.equal(head_before, module.model.head.weight)  # the head did train
    assert all(not p.requires_grad for p in module.model.backbone.parameters())
    optimizer_params = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimizer_params & {id(p) for p in module.model.backbone.parameters()}


def test_freeze_bn_keeps_batchnorm_fixed_while_the_rest_trains() -> None:
    torch.manual_seed(0)
    module = make_module(finetune={"name": "full", "freeze_bn": True})
    before = snapshot(module.model.backbone.model)
    fit(module, [Finetuning("full", freeze_bn=True)], batches=2)
    after = module.model.backbone.model.state_dict()
    bn_names = {
        f"{name}.{k}"
        for name, m in module.model.backbone.model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for k in m.state_dict()
    }
    assert bn_names
    assert all(torch.equal(before[k], after[k]) for k in bn_names)
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])


def test_gradual_unfreezes_top_stages_on_schedule_with_lr_warmup() -> None:
    torch.manual_seed(0)
    spec = {"name": "gradual", "unfreeze_at_epochs": [1, 2], "unfreeze_warmup_epochs": 1.0}
    module = make_module(finetune=spec)
    schedule = unfreeze_epochs(module.model.backbone.model, FinetuneSpec.from_config(spec))
    assert schedule["layer4.0.conv1.weight"] == 1 and schedule["conv1.0.weight"] == 2  # top first
    start = snapshot(module.model.backbone.model)
    recorder = Recorder()
    fit(module, [Finetuning(**spec), recorder], max_epochs=3, batches=3)
    e0, e1, e2 = recorder.epochs
    top = [k for k in start if k.startswith("layer4") and k.endswith("weight")]
    stem = [k for k in start if k.startswith("conv1")]
    assert all(torch.equal(start[k], e0[k]) for k in top + stem)  # epoch 0: head only
    assert all(not torch.equal(e0[k], e1[k]) for k in top)  # epoch 1: top chunk trains
    assert all(torch.equal(e0[k], e1[k]) for k in stem)  # ... the bottom does not yet
    assert all(not torch.equal(e1[k], e2[k]) for k in stem)  # epoch 2: everything
    late = [name for name in recorder.lrs[0] if "from_epoch1" in name]
    assert late
    steps = [lrs[late[0]] for lrs in recorder.lrs]
    assert steps[:3] == [0.0, 0.0, 0.0]  # frozen: LR 0
    assert 0 < steps[3] < steps[4] < steps[5]  # unfrozen: ramps up


def test_hub_download_failure_is_a_one_line_config_error(monkeypatch) -> None:
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="could not get pretrained weights for test_resnet") as info:
        TimmBackbone(TINY_NET, pretrained=True)
    assert "\n" not in info.value.one_line() and "backbone.weights" in info.value.one_line()


def test_a_list_optimizer_option_from_the_command_line_keeps_checkpoints_loadable(tmp_path: Path) -> None:
    """``+optimizer.betas=[0.9,0.95]`` (the README's own example of a new key) reached the optimizer as
    an OmegaConf ListConfig, which its param groups keep: every checkpoint of the run was refused by
    the weights_only load, after the whole run (predict, eval, export and resume included)."""
    from tests.conftest import TINY, TINY_SYNTHETIC, train_run

    run_dir = tmp_path / "run"
    train_run([*TINY, *TINY_SYNTHETIC, "+optimizer.betas=[0.9,0.95]", "eval.resolutions=[32]"], run_dir)
    checkpoint = safe_load(run_dir / "checkpoints" / "last.ckpt", what="checkpoint")
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert all(type(g["betas"]) in (list, tuple) and tuple(g["betas"]) == (0.9, 0.95) for g in groups)

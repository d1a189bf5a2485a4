"""The real client: lucidrains' magvit2-pytorch trains on trajlab's datasets as they are.

No conversion code here: the datasets' view options (layout CTHW, values in
[0, 1], bare-tensor items) are all the trainer needs. Offline settings:
``perceptual_loss_weight=0`` (the default VGG16 perceptual loss downloads
weights), ``use_gan=False`` and an explicit ``codebook_size`` for LFQ.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
magvit2 = pytest.importorskip("magvit2_pytorch")
from torch.utils.data import DataLoader  # noqa: E402

import trajlab  # noqa: E402
from trajlab.torchdata import OnTheFlyVideoDataset, TrajectoryVideoDataset  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

SPEC = trajlab.DatasetSpec.preset("magvit32", n_samples=48, style="trail", seed=5)
VIEW = dict(layout="CTHW", value_range=(0, 1), item="video")


def _tokenizer(seed):
    torch.manual_seed(seed)
    return magvit2.VideoTokenizer(
        image_size=SPEC.image_size, init_dim=8, max_dim=32, codebook_size=256,
        layers=("residual", "compress_space", "residual", "compress_time"),
        use_gan=False, perceptual_loss_weight=0, flash_attn=False)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("magvit") / "run"
    trajlab.generate(SPEC, run_dir, n_jobs=1, progress="none")
    return str(run_dir)


def _train(model, loader, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    while len(losses) < steps:
        for video in loader:
            assert video.shape[1:] == (3, SPEC.n_frames, SPEC.image_size, SPEC.image_size)
            loss, _breakdown = model(video, return_loss=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            if len(losses) == steps:
                break
    return losses


@pytest.mark.parametrize("source,workers", [("stored", 0), ("on_the_fly", 2)])
def test_video_tokenizer_loss_goes_down(stored, source, workers):
    ds = (TrajectoryVideoDataset(stored, split="train", **VIEW) if source == "stored"
          else OnTheFlyVideoDataset(SPEC, split="train", **VIEW))
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    losses = _train(_tokenizer(0), loader, 10)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_stored_and_on_the_fly_feed_identical_batches(stored):
    a = DataLoader(TrajectoryVideoDataset(stored, split="val", **VIEW), batch_size=3)
    b = DataLoader(OnTheFlyVideoDataset(SPEC, split="val", **VIEW), batch_size=3)
    pairs = list(zip(a, b, strict=True))
    assert pairs and all(torch.equal(x, y) for x, y in pairs)


def test_video_tokenizer_trainer_takes_the_dataset(tmp_path):
    ds = OnTheFlyVideoDataset(SPEC.replace(n_samples=16), split=None, **VIEW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = magvit2.VideoTokenizerTrainer(
            _tokenizer(1), dataset=ds, batch_size=2, num_train_steps=3, valid_frac=0.25,
            validate_every_step=2, checkpoint_every_step=1000, warmup_steps=1,
            learning_rate=1e-3, num_frames=SPEC.n_frames,
            results_folder=str(tmp_path / "results"), checkpoints_folder=str(tmp_path / "ckpt"),
            accelerate_kwargs=dict(cpu=True))
        trainer.train()
    assert trainer.step == 3
    # its validation step ran on our items (it unpacks exactly one tensor per batch)
    assert any(p.name.startswith("sampled.") for p in (tmp_path / "results").iterdir())

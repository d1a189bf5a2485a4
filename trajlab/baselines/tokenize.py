"""Video tokenizer baseline: magvit2-pytorch's ``VideoTokenizer`` with LFQ.

On trajlab clips (about 99 % background) the library's own loss, a plain
MSE over all pixels, is first minimised by decoding the blank background:
the training MSE sits on a plateau near the background's, where the dot is
faint and the codes carry little (the collapse seen in short runs). With the
small tokenizer of :data:`DEFAULT_LAYERS` a 17 x 32^2 run left that plateau
after about 350 steps; the weighted loss makes the dot dominate from the
first step. :func:`train_tokenizer` trains either with that loss
(``loss='mse'``, through ``VideoTokenizer.forward(..., return_loss=True)``)
or with a **foreground-weighted** MSE (``loss='weighted'``): the same
encoder, LFQ quantizer (with its auxiliary entropy/commitment loss) and
decoder of the library, called one by one, and pixels on or next to the
dot weighted ``fg_weight`` times more. :func:`evaluate_tokenizer` reports
the metrics of :mod:`trajlab.metrics` on a split, and
:func:`classify_codes` trains a small classifier on the frozen codes
(:class:`CodeStackCNN`, with the codes of mirrored train clips as extra
training data, see :func:`code_classification`).

Offline settings (no downloads): ``perceptual_loss_weight=0`` (the default
perceptual loss fetches VGG16 weights) and ``use_gan=False``. Clips are
``(B, 3, T, H, W)`` in [0, 1]; magvit-style trainers take ``T = 1 + k * 2**m``
(17 frames), and with ``m`` ``compress_time`` layers the tokenizer needs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _validation as v
from .. import metrics as M
from ._common import batches, require_videos, seeded, train_loop
from .classify import ClassifyResult, fit_classifier

__all__ = ["DEFAULT_LAYERS", "make_tokenizer", "foreground_weights", "train_tokenizer",
           "TokenizerRun", "encode", "evaluate_tokenizer", "CodeCNN", "CodeStackCNN",
           "classify_codes",
           "to_cthw", "code_classification", "report", "targets"]

#: Encoder layers: 32^2 -> 8^2 in space (one 8-bit token per 4 x 4 pixels of a
#: frame); time is not compressed, but the causal 3D convolutions see the
#: previous frames. With a ``("compress_time", dim)`` layer added, a token
#: covers two frames: on CPU budgets that trained slower (at 800 steps: dot
#: within 1 px in 66 % of test frames against 96 % without it).
DEFAULT_LAYERS = (("compress_space", 32), ("compress_space", 32), "residual")
LOSSES = ("mse", "weighted")


def _import_magvit():
    with warnings.catch_warnings():
        # torchvision (imported by magvit2-pytorch) warns that its C image
        # ops are missing in the CPU set-up; the tokenizer does not use them
        warnings.simplefilter("ignore")
        from magvit2_pytorch import VideoTokenizer
    return VideoTokenizer


def make_tokenizer(image_size, *, codebook_size=256, init_dim=16, layers=DEFAULT_LAYERS,
                   entropy_loss_weight=0.1, commitment_loss_weight=0.25):
    """A small offline ``magvit2_pytorch.VideoTokenizer`` with an LFQ codebook.

    Parameters
    ----------
    image_size : int
    codebook_size : int, default=256
        A power of 2 (LFQ codes are ``log2(codebook_size)`` bits).
    init_dim : int, default=16
    layers : tuple
        magvit2-pytorch layer spec (see :data:`DEFAULT_LAYERS`).
    entropy_loss_weight, commitment_loss_weight : float
        LFQ auxiliary losses (the entropy term spreads the code usage).

    Returns
    -------
    magvit2_pytorch.VideoTokenizer
    """
    own = "make_tokenizer"
    codebook_size = v.check_int(codebook_size, "codebook_size", own, 2, 2**16)
    if codebook_size & (codebook_size - 1):
        v.fail("codebook_size", own, "a power of 2 (LFQ) in the range [2, 65536]", codebook_size)
    VideoTokenizer = _import_magvit()
    return VideoTokenizer(
        image_size=image_size, init_dim=init_dim, layers=tuple(layers),
        codebook_size=codebook_size, input_conv_kernel_size=(3, 3, 3),
        lfq_entropy_loss_weight=entropy_loss_weight,
        lfq_commitment_loss_weight=commitment_loss_weight,
        perceptual_loss_weight=0.0, use_gan=False, adversarial_loss_weight=0.0,
        multiscale_adversarial_loss_weight=0.0, flash_attn=False)


def to_cthw(videos):
    """uint8 (B, T, 3, H, W) array -> float (B, 3, T, H, W) tensor in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(videos)).float().div_(255.0)
    return x.permute(0, 2, 1, 3, 4).contiguous()


def foreground_weights(video, fg_weight, *, threshold=0.02):
    """Per-pixel loss weights: ``1 + fg_weight`` on and next to the dot, 1 elsewhere.

    Parameters
    ----------
    video : Tensor of shape (B, 3, T, H, W), in [0, 1]
    fg_weight : float
    threshold : float
        A pixel is foreground when the mean over channels of
        ``|pixel - background|`` exceeds it; the mask is then dilated by
        one pixel so the dot's edge (and where a blurred dot would spill)
        count as well.

    Returns
    -------
    Tensor of shape (B, 1, T, H, W)
    """
    B = video.shape[0]
    bg = video.flatten(2).median(dim=-1).values[:, :, None, None, None]
    fg = ((video - bg).abs().mean(dim=1, keepdim=True) > threshold).float()
    fg = F.max_pool3d(fg, (1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + fg_weight * fg.view(B, 1, *video.shape[2:])


@dataclass
class TokenizerRun:
    """A trained tokenizer and its training record.

    Attributes
    ----------
    model : magvit2_pytorch.VideoTokenizer
    loss : {'mse', 'weighted'}
    losses, recon_mse : list of float
        Training loss per step, and the plain (unweighted) reconstruction
        MSE of each training batch.
    seconds : float
    steps : int
    stopped_early : bool
    codebook_size, n_params : int
    """

    model: object
    loss: str
    losses: list
    recon_mse: list
    seconds: float
    steps: int
    stopped_early: bool
    codebook_size: int
    n_params: int

    def summary(self):
        return (f"tokenizer ({self.loss} loss): {self.steps} steps in {self.seconds:.0f} s, "
                f"final recon MSE {np.mean(self.recon_mse[-20:]):.5f}, "
                f"{self.n_params:,} parameters, codebook {self.codebook_size}")


def train_tokenizer(train, *, loss="weighted", n_steps=500, batch_size=8, lr=2e-3,
                    fg_weight=50.0, codebook_size=256, init_dim=16, layers=DEFAULT_LAYERS,
                    seed=0, progress=True, max_seconds=None):
    """Train a :func:`make_tokenizer` model on the clips of ``train``.

    Parameters
    ----------
    train : Split
        Square clips of ``1 + k * 2**m`` frames for ``m`` ``compress_time``
        layers (17 frames fit magvit-style trainers).
    loss : {'mse', 'weighted'}, default='weighted'
        ``'mse'``: the library's loss (``model(video, return_loss=True)``,
        plain MSE + LFQ auxiliary loss). ``'weighted'``: the same with the
        MSE weighted by :func:`foreground_weights`.
    n_steps, batch_size : int
    lr : float
    fg_weight : float
        Extra weight of foreground pixels (``'weighted'`` only).
    codebook_size, init_dim, layers
        See :func:`make_tokenizer`.
    seed : int
    progress : bool
    max_seconds : float, optional

    Returns
    -------
    TokenizerRun
    """
    own = "train_tokenizer"
    require_videos(train, "train", own)
    v.check_choice(loss, "loss", own, LOSSES)
    n_steps = v.check_int(n_steps, "n_steps", own, 1)
    batch_size = v.check_int(batch_size, "batch_size", own, 1)
    fg_weight = v.check_float(fg_weight, "fg_weight", own, 0.0)
    recon_mse = []
    with seeded(seed) as gen:
        model = make_tokenizer(train.image_size, codebook_size=codebook_size, init_dim=init_dim,
                               layers=layers)
        factor = model.time_downsample_factor
        if (train.n_frames - 1) % factor:
            v.fail("train", own, f"a Split of clips of 1 + k * {factor} frames (the time "
                   f"compression of these layers), e.g. 17", f"{train.n_frames} frames")
        params = list(model.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps,
                                                    pct_start=0.05)
        stream = batches(len(train), min(batch_size, len(train)), gen)

        def step(_):
            video = to_cthw(train.videos[next(stream).numpy()])
            model.train()
            if loss == "mse":
                total, parts = model(video, return_loss=True)
                recon_mse.append(float(parts.recon_loss.detach()))
            else:
                z = model.encode(video)
                (q, _codes, aux), _ = model.quantizers(z, return_loss_breakdown=True)
                recon = model.decode(q)
                w = foreground_weights(video, fg_weight)
                se = (recon - video) ** 2
                total = (w * se).sum() / (w.sum() * video.shape[1]) + \
                    aux * model.quantizer_aux_loss_weight
                recon_mse.append(float(se.detach().mean()))
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            return total.item()

        hist = train_loop(step, n_steps, desc=f"tokenizer ({loss})", progress=progress,
                          max_seconds=max_seconds)
    model.eval()
    return TokenizerRun(model=model, loss=loss, losses=hist["losses"], recon_mse=recon_mse,
                        seconds=hist["seconds"], steps=hist["steps"],
                        stopped_early=hist["stopped_early"], codebook_size=codebook_size,
                        n_params=sum(p.numel() for p in params))


@torch.no_grad()
def encode(model, videos, *, batch_size=32):
    """Codes and reconstructions of clips.

    Parameters
    ----------
    model : magvit2_pytorch.VideoTokenizer
    videos : ndarray of shape (N, T, 3, H, W), uint8

    Returns
    -------
    codes : Tensor of shape (N, t, h, w), int64
    recon : Tensor of shape (N, T, 3, H, W), float32 in [0, 1] (clamped)
    """
    model.eval()
    codes, recon = [], []
    for a in range(0, len(videos), batch_size):
        c, r = model(to_cthw(videos[a:a + batch_size]), return_codes=True, return_recon=True)
        codes.append(c)
        recon.append(r.clamp(0, 1).permute(0, 2, 1, 3, 4))
    return torch.cat(codes), torch.cat(recon)


def evaluate_tokenizer(model, split, *, codebook_size):
    """Metrics of a tokenizer on a split (:mod:`trajlab.metrics`).

    Returns
    -------
    dict
        ``frames`` (:func:`~trajlab.metrics.frame_metrics` against the
        per-video background), ``dot`` (:func:`~trajlab.metrics.localisation`
        of the decoded dot against the stored pixels), ``codebook``
        (:func:`~trajlab.metrics.codebook_usage`), ``dot_pixel_mean``
        (mean decoded intensity on the true dot's pixels, truth near 1 for
        a white dot), ``codes`` and ``recon``.
    """
    require_videos(split, "split", "evaluate_tokenizer")
    codes, recon = encode(model, split.videos)
    target = M.as_float(split.videos)
    bg = M.background(split.videos)
    on_dot = (target - bg).abs().mean(dim=2) > 0.5
    dot_mean = float((recon - bg).abs().mean(dim=2)[on_dot].mean()) if on_dot.any() else 0.0
    return {"frames": M.frame_metrics(recon, target, bg),
            "dot": M.localisation(recon, split.pixels, bg),
            "codebook": M.codebook_usage(codes, codebook_size),
            "dot_pixel_mean": dot_mean, "codes": codes, "recon": recon}


class CodeCNN(nn.Module):
    """Small 3D CNN over a code grid, given as the LFQ code vectors (B, D, t, h, w)."""

    def __init__(self, n_in, grid, n_classes, width=32):
        super().__init__()
        t, h, w = grid
        pooled = (max(t // 2, 1), max(h // 2, 1), max(w // 2, 1))
        self.net = nn.Sequential(
            nn.Conv3d(n_in, width, 3, padding=1), nn.ReLU(),
            nn.Conv3d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool3d(pooled),
            nn.Flatten(), nn.Linear(width * pooled[0] * pooled[1] * pooled[2], 128), nn.ReLU(),
            nn.Linear(128, n_classes))

    def forward(self, x):
        return self.net(x)


class CodeStackCNN(nn.Module):
    """2D CNN over a code grid with the code times stacked as channels.

    Input: the LFQ code vectors (B, D, t, h, w). The ``t * D`` values of a
    grid cell (its code in every frame) are the channels, with two
    coordinate channels, as :class:`~trajlab.baselines.classify.StackedFrameCNN`
    does with frames: the first layer sees the whole path. Two stages of 3x3
    convolutions with batch norm (each halving the grid), dropout, two linear
    layers.
    """

    def __init__(self, n_in, grid, n_classes, width=64, dropout=0.3):
        super().__init__()
        t, h, w = grid
        self.features = nn.Sequential(
            nn.Conv2d(t * n_in + 2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(2 * width * (h // 4) * (w // 4), 128), nn.ReLU(),
                                  nn.Linear(128, n_classes))

    def forward(self, x):
        B, D, t, H, W = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(B, t * D, H, W)
        ys = torch.linspace(-1, 1, H, dtype=x.dtype).view(1, 1, H, 1).expand(B, 1, H, W)
        xs = torch.linspace(-1, 1, W, dtype=x.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
        return self.head(self.features(torch.cat([x, xs, ys], 1)))


PROBES = ("stacked", "3d")


def classify_codes(model, train_codes, train_labels, test_codes, test_labels, *, n_classes,
                   n_steps=300, batch_size=32, lr=1e-3, seed=0, progress=True, class_names=(),
                   probe="stacked"):
    """Classification from the frozen codes of a tokenizer.

    The code indices are mapped back to their (frozen) LFQ code vectors,
    ``+-1`` bits, with ``model.quantizers.indices_to_codes(..., project_out=False)``
    and a classifier is trained on them; the tokenizer is not changed.

    Parameters
    ----------
    probe : {'stacked', '3d'}, default='stacked'
        :class:`CodeStackCNN` (code times stacked as channels) or
        :class:`CodeCNN` (3D convolutions over time and space). On the test
        codes of one 17 x 32^2 tokenizer (weighted loss, 1,500 steps) the 3D
        probe reached 93.8 % (2,000 steps), the stacked one 96.5 % (2,000
        steps) and 98.8 % with the mirrored train codes added (3,000 steps).

    Returns
    -------
    ClassifyResult
    """
    v.check_choice(probe, "probe", "classify_codes", PROBES)
    q = model.quantizers
    prep = lambda c: q.indices_to_codes(torch.as_tensor(c), project_out=False).detach()  # noqa: E731
    grid = tuple(train_codes.shape[1:])
    d = prep(train_codes[:1]).shape[1]
    make = ((lambda: CodeStackCNN(d, grid, n_classes)) if probe == "stacked"
            else (lambda: CodeCNN(d, grid, n_classes)))
    return fit_classifier("CNN on frozen codes", make,
                          np.asarray(train_codes), train_labels, np.asarray(test_codes),
                          test_labels, prep=prep, n_classes=n_classes, n_steps=n_steps,
                          batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                          class_names=class_names)


def code_classification(run, train, test, *, n_steps=300, seed=0, progress=True,
                        test_codes=None, mirror=True, probe="stacked"):
    """Encode both splits with a trained tokenizer and classify from its frozen codes.

    Parameters
    ----------
    run : TokenizerRun
    train, test : Split
    test_codes : Tensor, optional
        Codes of ``test`` already computed (e.g. ``evaluate_tokenizer(...)["codes"]``).
    mirror : bool, default=True
        Also train on the codes of the left-right mirrored train clips
        (mirrored paths are paths of the same classes), encoded by the same
        frozen tokenizer: twice the training codes at no cost to the
        tokenizer. The test clips are never mirrored.
    probe : {'stacked', '3d'}
        See :func:`classify_codes`.

    Returns
    -------
    ClassifyResult
    """
    train_codes, _ = encode(run.model, train.videos)
    labels = train.labels
    if mirror:
        flipped, _ = encode(run.model, np.ascontiguousarray(train.videos[..., ::-1]))
        train_codes = torch.cat([train_codes, flipped])
        labels = np.concatenate([labels, labels])
    if test_codes is None:
        test_codes, _ = encode(run.model, test.videos)
    return classify_codes(run.model, train_codes, labels, test_codes, test.labels,
                          n_classes=train.n_classes, n_steps=n_steps, seed=seed,
                          progress=progress, class_names=train.class_names, probe=probe)


def report(runs, evaluations, code_results):
    """Text table comparing tokenizers (name -> run, evaluation, code classifier)."""
    names = list(runs)
    rows = [
        ("training steps", lambda n: f"{runs[n].steps}"),
        ("training minutes", lambda n: f"{runs[n].seconds / 60:.1f}"),
        ("train recon MSE (last 20 steps)", lambda n: f"{np.mean(runs[n].recon_mse[-20:]):.5f}"),
        ("test PSNR (dB)", lambda n: f"{evaluations[n]['frames']['psnr']:.2f}"),
        ("  background-only PSNR (dB)", lambda n: f"{evaluations[n]['frames']['psnr_trivial']:.2f}"),
        ("  PSNR gain (dB)", lambda n: f"{evaluations[n]['frames']['psnr_gain']:+.2f}"),
        ("test SSIM", lambda n: f"{evaluations[n]['frames']['ssim']:.4f}"),
        ("  background-only SSIM", lambda n: f"{evaluations[n]['frames']['ssim_trivial']:.4f}"),
        ("decoded intensity on dot pixels", lambda n: f"{evaluations[n]['dot_pixel_mean']:.3f}"),
        ("frames with a decoded dot", lambda n: f"{evaluations[n]['dot']['found']:.2%}"),
        ("dot mean error (px, where found)", lambda n: f"{evaluations[n]['dot']['mean_px']:.3f}"),
        ("dot within 1 px", lambda n: f"{evaluations[n]['dot']['within_1px']:.2%}"),
        ("dot within 2 px", lambda n: f"{evaluations[n]['dot']['within_2px']:.2%}"),
        ("codes used", lambda n: f"{evaluations[n]['codebook']['used']}/"
                                 f"{evaluations[n]['codebook']['codebook_size']}"),
        ("codebook utilisation", lambda n: f"{evaluations[n]['codebook']['utilisation']:.1%}"),
        ("code perplexity", lambda n: f"{evaluations[n]['codebook']['perplexity']:.1f}"),
        ("classification from frozen codes", lambda n: f"{code_results[n].accuracy:.2%}"),
    ]
    w = max(len(r[0]) for r in rows)
    cw = max(12, *(len(n) for n in names))
    lines = [f"{'test split':<{w}}" + "".join(f"  {n:>{cw}}" for n in names)]
    lines += [f"{label:<{w}}" + "".join(f"  {fn(n):>{cw}}" for n in names) for label, fn in rows]
    return "\n".join(lines)


def targets(run, evaluation, code_result, *, min_within_1px, min_psnr_gain, min_utilisation,
            min_code_accuracy, max_train_minutes, title=None):
    """The pass/fail table of the tokenizer task (for one tokenizer)."""
    from ._common import TargetTable

    t = TargetTable(title or f"tokenizer targets ({run.loss} loss)")
    t.add("decoded dot within 1 px", evaluation["dot"]["within_1px"], ">=", min_within_1px)
    t.add("PSNR gain over background", evaluation["frames"]["psnr_gain"], ">=", min_psnr_gain,
          " dB")
    t.add("codebook utilisation", evaluation["codebook"]["utilisation"], ">=", min_utilisation)
    t.add("classification from frozen codes", code_result.accuracy, ">=", min_code_accuracy)
    t.add("training minutes", run.seconds / 60.0, "<=", max_train_minutes)
    return t

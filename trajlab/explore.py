"""Interactive exploration of single samples (the engine behind notebook 01).

:func:`class_sample` picks the ``j``-th sample of a class in a dataset: since
labels come in blocks of ``C = len(spec.classes)`` samples, each a
permutation of the classes (see :mod:`trajlab.generator`), that sample lies
in block ``j`` and only ``C`` samples need generating. :func:`overview`
draws it; :class:`Explorer` wires ipywidgets controls to it.
"""

from __future__ import annotations

import html
import io
import textwrap

import numpy as np

from . import plotting
from .generator import generate_block
from .spec import CameraSpec, DatasetSpec

__all__ = ["class_sample", "overview", "Explorer", "explorer"]


def _check_class(spec, class_name, owner):
    if class_name not in spec.classes:
        listed = ", ".join(repr(c) for c in spec.classes)
        raise ValueError(f"The 'class_name' parameter of {owner} must be one of "
                         f"{{{listed}}}. Got {class_name!r} instead.")


def class_sample(spec, class_name, sample=0):
    """The ``sample``-th clip of class ``class_name`` in the dataset ``spec``.

    Parameters
    ----------
    spec : DatasetSpec
    class_name : str
        One of ``spec.classes``.
    sample : int, default=0
        Index within the class (0 = first clip of that class in the
        dataset). Not bounded by ``spec.n_samples``: the bytes of a sample
        never depend on the dataset size.

    Returns
    -------
    dict
        ``index`` (dataset index), ``label``, ``video`` (T, 3, H, W) uint8,
        ``positions`` (T, 3), ``pixels`` (T, 2), ``depth`` (T,), ``radius``
        (T,), ``K``, ``R`` (3, 3), ``t`` (3,), ``attempts`` (int) and
        ``record`` (class, split, params, equation, description).
    """
    from ._validation import check_int

    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"The 'spec' parameter of class_sample must be a DatasetSpec. "
                        f"Got {spec!r} instead.")
    _check_class(spec, class_name, "class_sample")
    sample = check_int(sample, "sample", "class_sample", 0)
    C = spec.n_classes
    block = generate_block(spec, C * sample, C * (sample + 1))
    k = int(np.flatnonzero(block.labels == spec.classes.index(class_name))[0])
    out = {key: getattr(block, key)[k] for key in
           ("videos", "positions", "pixels", "depth", "radius", "K", "R", "t")}
    out["video"] = out.pop("videos")
    out.update(index=block.start + k, label=int(block.labels[k]),
               attempts=int(block.attempts[k]), record=block.annotations(spec)[k])
    return out


def overview(spec, class_name, sample=0, *, frames=None):
    """Figure of one clip: 3D path and camera, projected path, frame strip.

    Parameters
    ----------
    spec : DatasetSpec
    class_name : str
    sample : int, default=0
        Index within the class (see :func:`class_sample`).
    frames : sequence of int, optional
        Frames in the strip; default all.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    s = class_sample(spec, class_name, sample)
    rec = s["record"]
    title = (f"{class_name} — sample {sample} of its class (dataset index {s['index']}, "
             f"{rec['split']}), seed {spec.seed}, {spec.n_frames} frames, "
             f"{spec.image_size} px, style {spec.style!r}")
    return plotting.sample_figure(s["video"], s["positions"], s["pixels"], s["R"], s["t"],
                                  s["K"], spec.image_size, radius=s["radius"], title=title,
                                  subtitle=rec["description"] + " " + rec["equation"],
                                  frames=frames)


def overviews(spec, sample=0, *, frames=None):
    """:func:`overview` of each class of ``spec``, in class order.

    Returns
    -------
    figs : list of matplotlib.figure.Figure
    """
    return [overview(spec, name, sample, frames=frames) for name in spec.classes]


def _frame_png(frame, size=256):
    """PNG bytes of one (3, H, W) uint8 frame, enlarged by pixel repetition."""
    from matplotlib.image import imsave

    img = np.moveaxis(frame, 0, -1)
    rep = max(1, size // img.shape[0])
    img = np.repeat(np.repeat(img, rep, axis=0), rep, axis=1)
    buf = io.BytesIO()
    imsave(buf, img, format="png")
    return buf.getvalue()


class Explorer:
    """Widgets to browse samples: class, sample, seed, frames, size, style, camera.

    Every control re-generates the chosen sample (a pure function of the
    spec built from the controls) and redraws: the overview figure (3D
    path with camera, projected path, frame strip) as an image, and the
    clip itself, played by the ``Play`` button or stepped with ``frame``.
    Invalid combinations (e.g. a camera so close that no trajectory fits)
    are reported in the status line; the last good figure stays.

    Parameters
    ----------
    spec : DatasetSpec, optional
        Starting point; default ``DatasetSpec()``.
    class_name : str, optional
        Initial class; default the first of ``spec.classes``.
    sample : int, default=0
        Initial within-class sample index.

    Attributes
    ----------
    controls : dict of str to ipywidgets.Widget
        ``class``, ``sample``, ``seed``, ``n_frames``, ``image_size``,
        ``style``, ``distance``, ``azimuth``, ``elevation``, ``fov``,
        ``frame``, ``play``.
    figure : ipywidgets.Image
        The overview figure (PNG).
    frame_view : ipywidgets.Image
        The current frame, enlarged.
    status : ipywidgets.HTML
    widget : ipywidgets.VBox
        Everything, ready to display (the explorer displays as it).
    n_renders : int
        Number of successful redraws (for tests).
    """

    def __init__(self, spec=None, *, class_name=None, sample=0):
        import ipywidgets as w

        spec = DatasetSpec() if spec is None else spec
        if not isinstance(spec, DatasetSpec):
            raise TypeError(f"The 'spec' parameter of Explorer must be a DatasetSpec. "
                            f"Got {spec!r} instead.")
        class_name = spec.classes[0] if class_name is None else class_name
        _check_class(spec, class_name, "Explorer")
        self.spec = spec
        self.n_renders = 0
        self._frames = []
        cs = spec.camera
        wide = {"description_width": "initial"}
        lay = w.Layout(width="330px")
        rng = dict(continuous_update=False, readout_format=".0f", style=wide, layout=lay)
        sizes = sorted({32, 48, 64, 96, 128, spec.image_size})
        c = {
            "class": w.Dropdown(options=list(spec.classes), value=class_name,
                                description="class", style=wide, layout=lay),
            "sample": w.IntSlider(value=sample, min=0, max=max(199, sample),
                                  description="sample", continuous_update=False,
                                  style=wide, layout=lay),
            "seed": w.BoundedIntText(value=spec.seed, min=0, max=2**31 - 1,
                                     description="seed", style=wide, layout=lay),
            "n_frames": w.IntSlider(value=spec.n_frames, min=2, max=max(48, spec.n_frames),
                                    description="n_frames", continuous_update=False,
                                    style=wide, layout=lay),
            "image_size": w.Dropdown(options=sizes, value=spec.image_size,
                                     description="image_size", style=wide, layout=lay),
            "style": w.ToggleButtons(options=["dot", "trail"], value=spec.style,
                                     description="style", style=wide),
            "distance": w.FloatRangeSlider(value=cs.distance, min=1.0, max=20.0, step=0.5,
                                           description="camera distance (m)",
                                           **{**rng, "readout_format": ".1f"}),
            "azimuth": w.FloatRangeSlider(value=cs.azimuth_deg, min=-180.0, max=180.0,
                                          step=5.0, description="camera azimuth (°)", **rng),
            "elevation": w.FloatRangeSlider(value=cs.elevation_deg, min=5.0, max=60.0,
                                            step=1.0, description="camera elevation (°)",
                                            **rng),
            "fov": w.FloatRangeSlider(value=cs.fov_deg, min=10.0, max=120.0, step=1.0,
                                      description="field of view (°)", **rng),
        }
        c["frame"] = w.IntSlider(value=0, min=0, max=spec.n_frames - 1, description="frame",
                                 style=wide, layout=w.Layout(width="200px"))
        c["play"] = w.Play(value=0, min=0, max=spec.n_frames - 1, interval=125,
                           description="play", show_repeat=True, repeat=True)
        w.jslink((c["play"], "value"), (c["frame"], "value"))
        self.controls = c
        self.figure = w.Image(format="png", layout=w.Layout(width="680px"))
        self.frame_view = w.Image(format="png", layout=w.Layout(width="200px", height="200px"))
        self.status = w.HTML()
        for name, ctl in c.items():
            if name in ("frame", "play"):
                continue
            ctl.observe(self._on_change, names="value")
        c["frame"].observe(self._on_frame, names="value")
        left = w.VBox([c[k] for k in ("class", "sample", "seed", "n_frames", "image_size",
                                      "style")])
        right = w.VBox([c[k] for k in ("distance", "azimuth", "elevation", "fov")])
        clip = w.VBox([w.HTML("<b>clip</b>"), self.frame_view, c["play"], c["frame"]])
        self.widget = w.VBox([w.HBox([left, right]), self.status,
                              w.HBox([self.figure, clip])])
        self.render()

    # ------------------------------------------------------------ state
    def current_spec(self):
        """The :class:`DatasetSpec` described by the controls (validated)."""
        c = self.controls
        camera = CameraSpec(distance=c["distance"].value, azimuth_deg=c["azimuth"].value,
                            elevation_deg=c["elevation"].value, fov_deg=c["fov"].value)
        return self.spec.replace(seed=int(c["seed"].value), n_frames=int(c["n_frames"].value),
                                 image_size=int(c["image_size"].value),
                                 style=c["style"].value, camera=camera)

    def render(self):
        """Regenerate the chosen sample and redraw; returns True on success."""
        c = self.controls
        try:
            spec = self.current_spec()
            s = class_sample(spec, c["class"].value, int(c["sample"].value))
        except (ValueError, TypeError, RuntimeError) as exc:
            self.status.value = ("<span style='color:#b00'>"
                                 + html.escape(str(exc)) + "</span>")
            return False
        rec = s["record"]
        title = (f"{rec['class']} — sample {c['sample'].value} of its class "
                 f"(dataset index {s['index']}, {rec['split']}), seed {spec.seed}")
        fig = plotting.sample_figure(s["video"], s["positions"], s["pixels"], s["R"], s["t"],
                                     s["K"], spec.image_size, radius=s["radius"],
                                     title=title, subtitle=rec["description"])
        self.figure.value = plotting.to_png(fig, dpi=80)
        self._frames = [_frame_png(f) for f in s["video"]]
        T = spec.n_frames
        for key in ("frame", "play"):
            c[key].max = T - 1
        c["frame"].value = min(c["frame"].value, T - 1)
        self.frame_view.value = self._frames[c["frame"].value]
        eq = "<br>".join(html.escape(line) for line in textwrap.wrap(rec["equation"], 140))
        self.status.value = (f"<span style='font-size:90%'>fingerprint "
                             f"<code>{spec.fingerprint}</code>, accepted at draw "
                             f"{s['attempts']}<br>{eq}</span>")
        self.sample = s
        self.n_renders += 1
        return True

    def _on_change(self, change):
        self.render()

    def _on_frame(self, change):
        if self._frames:
            self.frame_view.value = self._frames[min(change["new"], len(self._frames) - 1)]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self):
        c = self.controls
        return (f"Explorer(class={c['class'].value!r}, sample={c['sample'].value}, "
                f"seed={c['seed'].value})")


def explorer(spec=None, *, class_name=None, sample=0):
    """Build an :class:`Explorer`; display it (last expression of a cell).

    Parameters
    ----------
    spec : DatasetSpec, optional
    class_name : str, optional
    sample : int, default=0

    Returns
    -------
    Explorer
    """
    return Explorer(spec, class_name=class_name, sample=sample)

"""Matplotlib figures for notebooks: montages, paths, frame strips, animations.

Every function builds its own :class:`matplotlib.figure.Figure` (never
through :mod:`matplotlib.pyplot`), so nothing is registered in pyplot's
global figure list, nothing is shown twice in Jupyter and figures are freed
as soon as they are dropped. In a notebook, put ``%matplotlib inline`` in
the imports cell and make the figure the cell's last expression (or
``display(fig)``). Functions that take ``ax`` draw into that axes and return
its figure, so panels can be composed.

Conventions are those of :mod:`trajlab.camera`: world Z up; pixels ``(u, v)``
with ``v`` growing downwards and pixel ``(row i, col j)`` covering
``[j, j+1) x [i, i+1)``; videos are uint8 of shape ``(N, T, 3, H, W)``.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from . import camera as cam

__all__ = ["montage", "plot_paths_3d", "plot_paths_2d", "plot_paths_by_class", "frame_strip",
           "animate", "parameter_histograms", "plot_rejections", "sample_figure",
           "class_colors", "to_png"]

#: Grey (uint8) of the gaps between tiled frames.
GAP_VALUE = 96
_CMAP = "tab10"


# ---------------------------------------------------------------- helpers
def class_colors(n):
    """``n`` distinct RGBA colours (tab10), one per class label.

    Returns
    -------
    colors : ndarray of shape (n, 4), float
    """
    from matplotlib import colormaps

    return colormaps[_CMAP](np.arange(n) % 10)


def _hwc(frames):
    """(..., 3, H, W) -> (..., H, W, 3)."""
    return np.moveaxis(np.asarray(frames), -3, -1)


def _check_video(video, ndim, name, owner):
    video = np.asarray(video)
    if video.ndim != ndim or video.shape[-3] != 3:
        shape = "(N, T, 3, H, W)" if ndim == 5 else "(T, 3, H, W)"
        raise ValueError(f"The {name!r} parameter of {owner} must be an array of shape "
                         f"{shape}. Got shape {video.shape} instead.")
    return video


def _tile(images, gap=1, fill=GAP_VALUE):
    """Tile images of shape (R, C, H, W, 3) into one (R*(H+g)-g, C*(W+g)-g, 3) array."""
    R, C, H, W, ch = images.shape
    out = np.full((R, H + gap, C, W + gap, ch), fill, dtype=images.dtype)
    out[:, :H, :, :W] = np.swapaxes(images, 1, 2)
    out = out.reshape(R * (H + gap), C * (W + gap), ch)
    return out[:R * (H + gap) - gap, :C * (W + gap) - gap]


def _default_frames(T, max_frames=8):
    if T <= max_frames:
        return np.arange(T)
    return np.unique(np.round(np.linspace(0, T - 1, max_frames)).astype(int))


def _new_axes(ax, figsize, projection=None):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(projection=projection)


def to_png(fig, dpi=None):
    """Render a figure to PNG bytes (used by widgets; no display needed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _label_names(labels, class_names):
    if labels is None:
        return None
    labels = np.asarray(labels)
    if class_names is None:
        return [str(int(k)) for k in labels]
    return [str(class_names[int(k)]) for k in labels]


# ---------------------------------------------------------------- grids of frames
def montage(videos, labels=None, class_names=None, n_per_class=4, frames=None, *,
            gap=1, title=None):
    """Grid of frames: one row per clip, one column per chosen frame.

    Parameters
    ----------
    videos : ndarray of shape (N, T, 3, H, W), uint8
    labels : ndarray of shape (N,), int, optional
        When given, the first ``n_per_class`` clips of every class are shown,
        grouped by class; otherwise the first ``n_per_class`` clips.
    class_names : sequence of str, optional
        Names of the labels, used for row titles.
    n_per_class : int, default=4
    frames : sequence of int, optional
        Frame indices to show; default up to 8 evenly spaced frames.
    gap : int, default=1
        Grey pixels between tiles.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    videos = _check_video(videos, 5, "videos", "montage")
    N, T, _, H, W = videos.shape
    if labels is None:
        rows = np.arange(min(N, n_per_class))
    else:
        labels = np.asarray(labels)
        if labels.shape != (N,):
            raise ValueError(f"The 'labels' parameter of montage must have shape ({N},). "
                             f"Got shape {labels.shape} instead.")
        rows = np.concatenate([np.flatnonzero(labels == c)[:n_per_class]
                               for c in np.unique(labels)]).astype(int)
    frames = _default_frames(T) if frames is None else np.asarray(frames, dtype=int)
    grid = _tile(_hwc(videos[rows][:, frames]), gap)
    nr, nc = len(rows), len(frames)
    fig = Figure(figsize=(min(18.0, 1.1 + 0.9 * nc), min(30.0, 0.5 + 0.9 * nr)),
                 layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks((W + gap) * np.arange(nc) + (W - 1) / 2, [f"t={k}" for k in frames])
    names = _label_names(None if labels is None else labels[rows], class_names)
    ytick = [f"#{i}" if names is None else f"{names[j]} #{i}" for j, i in enumerate(rows)]
    ax.set_yticks((H + gap) * np.arange(nr) + (H - 1) / 2, ytick)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return fig


def frame_strip(video, ax=None, *, frames=None, gap=1, title=None):
    """All (or some) frames of one clip side by side.

    Parameters
    ----------
    video : ndarray of shape (T, 3, H, W), uint8
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is made otherwise.
    frames : sequence of int, optional
        Frame indices; default all frames.
    gap : int, default=1
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    video = _check_video(video, 4, "video", "frame_strip")
    T, _, H, W = video.shape
    frames = np.arange(T) if frames is None else np.asarray(frames, dtype=int)
    strip = _tile(_hwc(video[frames])[None], gap)
    fig, ax = _new_axes(ax, (min(18.0, 0.8 * len(frames) + 0.5), 1.4))
    ax.imshow(strip, interpolation="nearest")
    step = max(1, len(frames) // 16)
    ticks = np.arange(0, len(frames), step)
    ax.set_xticks((W + gap) * ticks + (W - 1) / 2, [str(k) for k in frames[ticks]])
    ax.set_yticks([])
    ax.set_xlabel("frame")
    ax.tick_params(length=0)
    if title:
        ax.set_title(title)
    return fig


# ---------------------------------------------------------------- paths
def _as_batch(a, tail_ndim):
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == tail_ndim else a


def _path_colors(n, labels, n_classes=None):
    if labels is None:
        from matplotlib import colormaps

        return colormaps["viridis"](np.linspace(0.0, 0.9, n)) if n > 1 else class_colors(1)
    labels = np.asarray(labels, dtype=int)
    return class_colors(max(int(labels.max()) + 1, n_classes or 0))[labels]


def _legend(ax, labels, class_names, colors):
    if labels is None or class_names is None:
        return
    from matplotlib.lines import Line2D

    seen = sorted(set(int(k) for k in np.asarray(labels)))
    handles = [Line2D([], [], color=class_colors(len(class_names))[k], label=class_names[k])
               for k in seen]
    ax.legend(handles=handles, loc="best", fontsize="small")


def plot_paths_3d(positions, R, t, ax=None, *, K=None, image_size=None, labels=None,
                  class_names=None, frustum_depth=None, show_world_axes=True, title=None):
    """3D paths with the camera centre and viewing frustum; world Z up.

    Parameters
    ----------
    positions : ndarray of shape (T, 3) or (N, T, 3)
        World positions, metres.
    R : ndarray of shape (3, 3) or (N, 3, 3)
        World-to-camera rotations (see :mod:`trajlab.camera`).
    t : ndarray of shape (3,) or (N, 3)
        World-to-camera translations.
    ax : mpl_toolkits.mplot3d.Axes3D, optional
        3D axes to draw into; a new figure is made otherwise.
    K : ndarray of shape (3, 3) or (N, 3, 3), optional
        Intrinsics, to draw the true frustum; a 40 degree one otherwise.
    image_size : int, optional
        Needed with ``K``.
    labels : ndarray of shape (N,), int, optional
        Colours paths by class.
    class_names : sequence of str, optional
        Legend entries for ``labels``.
    frustum_depth : float, optional
        Length of the drawn frustum, metres; default a third of the
        distance from the camera to the origin.
    show_world_axes : bool, default=True
        Draw short X (red), Y (green), Z (blue) axes at the origin.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Notes
    -----
    Each path starts at a circle and ends at a cross. The frustum's top
    image edge (``v = 0``) is drawn thicker, so the image's "up" can be
    read off the figure. Several cameras (one per path) are all drawn.
    """
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    P = _as_batch(positions, 2)
    Rb = _as_batch(R, 2)
    tb = _as_batch(t, 1)
    N = P.shape[0]
    fig, ax = _new_axes(ax, (5.5, 5.0), projection="3d")
    colors = _path_colors(N, labels, None if class_names is None else len(class_names))
    ax.add_collection3d(Line3DCollection(P, colors=colors, linewidths=1.8))
    ax.scatter(*P[:, 0].T, color=colors, marker="o", s=22, depthshade=False)
    ax.scatter(*P[:, -1].T, color=colors, marker="x", s=28, depthshade=False)

    # cameras: centre and frustum corners at the chosen depth
    C = cam.camera_centre(Rb, tb)                                    # (M, 3)
    if K is None:
        size = 1.0
        Kb = np.broadcast_to(cam.intrinsics(1.0, 40.0), Rb.shape)
    else:
        if image_size is None:
            raise ValueError("The 'image_size' parameter of plot_paths_3d is required "
                             "when 'K' is given. Got None instead.")
        size = float(image_size)
        Kb = np.broadcast_to(_as_batch(K, 2), Rb.shape)
    depth = (np.linalg.norm(C, axis=-1) / 3.0 if frustum_depth is None
             else np.full(C.shape[0], float(frustum_depth)))
    corners_px = np.array([[0.0, 0.0], [size, 0.0], [size, size], [0.0, size]])
    corners = cam.unproject(np.broadcast_to(corners_px, (C.shape[0], 4, 2)),
                            np.repeat(depth[:, None], 4, axis=1), Kb, Rb, tb)   # (M, 4, 3)
    rays = np.stack([np.repeat(C[:, None], 4, axis=1), corners], axis=2).reshape(-1, 2, 3)
    rect = np.stack([corners, np.roll(corners, -1, axis=1)], axis=2)            # (M, 4, 2, 3)
    ax.add_collection3d(Line3DCollection(rays, colors="0.35", linewidths=0.8))
    ax.add_collection3d(Line3DCollection(rect[:, 1:].reshape(-1, 2, 3), colors="0.35",
                                         linewidths=0.8))
    ax.add_collection3d(Line3DCollection(rect[:, 0], colors="k", linewidths=2.2))  # top edge
    ax.scatter(*C.T, color="k", marker="s", s=30, depthshade=False, label="camera")

    pts = [P.reshape(-1, 3), C, corners.reshape(-1, 3)]
    if show_world_axes:
        L = 0.5
        for k, c in enumerate("rgb"):
            end = np.zeros(3)
            end[k] = L
            ax.plot(*np.stack([np.zeros(3), end]).T, color=c, linewidth=1.2)
        pts.append(np.eye(3) * L)
    allp = np.concatenate(pts)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    mid, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 0.5) * 1.05
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("X (m)")
    ax.set_ylabel("Y (m)")
    ax.set_zlabel("Z (m), up")
    _legend(ax, labels, class_names, colors)
    if title:
        ax.set_title(title)
    return fig


def plot_paths_2d(pixels, image_size, ax=None, *, background=None, labels=None,
                  class_names=None, radius=None, title=None):
    """Projected paths in image coordinates (``v`` down), over an optional frame.

    Parameters
    ----------
    pixels : ndarray of shape (T, 2) or (N, T, 2)
        Sub-pixel ``(u, v)`` positions, unclipped.
    image_size : int
    ax : matplotlib.axes.Axes, optional
    background : ndarray of shape (3, H, W) or (H, W, 3), uint8, optional
        Image drawn under the paths, e.g. a frame or ``video.max(axis=0)``.
    labels : ndarray of shape (N,), int, optional
    class_names : sequence of str, optional
    radius : ndarray of shape (T,) or (N, T), optional
        Pixel radii; draws the dot outline at the first and last frame.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure

    Notes
    -----
    The image occupies ``[0, S] x [0, S]`` so pixel centres are at
    integer + 0.5, as in :mod:`trajlab.camera`. Points outside the image
    widen the axes rather than being clipped; the frame border is drawn.
    """
    from matplotlib.patches import Circle, Rectangle

    Pix = _as_batch(pixels, 2)
    N = Pix.shape[0]
    S = float(image_size)
    fig, ax = _new_axes(ax, (4.6, 4.6))
    if background is not None:
        bg = np.asarray(background)
        if bg.ndim == 3 and bg.shape[0] == 3 and bg.shape[-1] != 3:
            bg = _hwc(bg)
        ax.imshow(bg, extent=(0, S, S, 0), interpolation="nearest")
    else:
        ax.add_patch(Rectangle((0, 0), S, S, facecolor="0.95", edgecolor="none"))
    ax.add_patch(Rectangle((0, 0), S, S, fill=False, edgecolor="0.4", linewidth=1.0))
    colors = _path_colors(N, labels, None if class_names is None else len(class_names))
    ax.add_collection(LineCollection(Pix, colors=colors, linewidths=1.4))
    ax.scatter(Pix[:, :, 0].ravel(), Pix[:, :, 1].ravel(),
               color=np.repeat(colors, Pix.shape[1], axis=0), s=6, zorder=3)
    ax.scatter(*Pix[:, 0].T, color=colors, marker="o", s=30, edgecolor="w", zorder=4)
    ax.scatter(*Pix[:, -1].T, color=colors, marker="X", s=40, edgecolor="w", zorder=4)
    if radius is not None:
        rad = _as_batch(radius, 1)
        for n in range(N):
            for k in (0, -1):
                ax.add_patch(Circle(Pix[n, k], rad[n, k], fill=False, edgecolor=colors[n],
                                    linewidth=0.8, linestyle="--"))
    lo = min(0.0, float(np.nanmin(Pix)) - 1.0)
    hi = max(S, float(np.nanmax(Pix)) + 1.0)
    ax.set_xlim(lo, hi)
    ax.set_ylim(hi, lo)          # v grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("u (px, right)")
    ax.set_ylabel("v (px, down)")
    _legend(ax, labels, class_names, colors)
    if title:
        ax.set_title(title)
    return fig


def plot_paths_by_class(pixels, labels, image_size, class_names=None, *, max_per_class=50,
                        title=None):
    """Projected paths overlaid, one panel per class.

    Parameters
    ----------
    pixels : ndarray of shape (N, T, 2)
        Sub-pixel ``(u, v)`` positions, unclipped (a memory map is fine: only
        the shown paths are read).
    labels : ndarray of shape (N,), int
    image_size : int
    class_names : sequence of str, optional
        Names of labels ``0..C-1``; default the labels present.
    max_per_class : int, default=50
        Paths shown per class: the first ones in index order.
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
        One panel per class, as :func:`plot_paths_2d`, in the class colour.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != pixels.shape[0]:
        raise ValueError(f"The 'labels' parameter of plot_paths_by_class must have shape "
                         f"({pixels.shape[0]},). Got shape {labels.shape} instead.")
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, (int, np.integer)) \
            or max_per_class < 1:
        raise ValueError("The 'max_per_class' parameter of plot_paths_by_class must be an int "
                         f"in the range [1, inf). Got {max_per_class!r} instead.")
    ks = (np.arange(len(class_names)) if class_names is not None
          else np.unique(labels).astype(int))
    fig = Figure(figsize=(3.3 * len(ks), 3.6), layout="constrained")
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks):
        members = np.flatnonzero(labels == k)
        idx = members[:max_per_class]
        name = class_names[k] if class_names is not None else str(k)
        if idx.size == 0:
            ax.set_title(f"{name}: no samples", fontsize="small")
            ax.set_axis_off()
            continue
        plot_paths_2d(np.asarray(pixels[idx]), image_size, ax=ax,
                      labels=np.full(idx.size, k),
                      title=f"{name}: {idx.size} of {members.size}")
        ax.title.set_fontsize("small")
    if title:
        fig.suptitle(title)
    return fig


def sample_figure(video, positions, pixels, R, t, K, image_size, *, radius=None,
                  title=None, subtitle=None, frames=None):
    """One clip at a glance: 3D path with camera, projected path, frame strip.

    Parameters
    ----------
    video : ndarray of shape (T, 3, H, W), uint8
    positions : ndarray of shape (T, 3)
    pixels : ndarray of shape (T, 2)
    R, K : ndarray of shape (3, 3)
    t : ndarray of shape (3,)
    image_size : int
    radius : ndarray of shape (T,), optional
    title, subtitle : str, optional
        Figure title and a smaller line under it (wrapped).
    frames : sequence of int, optional
        Frames in the strip; default all.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    fig = Figure(figsize=(11.0, 7.6), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=(4.2, 1.25))
    ax3 = fig.add_subplot(gs[0, 0], projection="3d")
    ax2 = fig.add_subplot(gs[0, 1])
    axs = fig.add_subplot(gs[1, :])
    plot_paths_3d(positions, R, t, ax=ax3, K=K, image_size=image_size,
                  title="3D path and camera (world Z up)")
    plot_paths_2d(pixels, image_size, ax=ax2, background=np.asarray(video).max(axis=0),
                  radius=radius, title="projected path over all frames (max)")
    frame_strip(video, ax=axs, frames=frames)
    if title or subtitle:
        text = title or ""
        if subtitle:
            text += "\n" + "\n".join(textwrap.wrap(subtitle, 130))
        fig.suptitle(text, fontsize="medium")
    return fig


# ---------------------------------------------------------------- animation
def animate(video, *, fps=8, titles=None, scale=4, gap=2, embed=True):
    """Animate one clip (or several side by side), headless-safe.

    Parameters
    ----------
    video : ndarray of shape (T, 3, H, W) or (N, T, 3, H, W), uint8
    fps : float, default=8
    titles : sequence of str, optional
        One per clip, drawn above it.
    scale : int, default=4
        Display pixels per image pixel (nearest neighbour).
    gap : int, default=2
        Grey pixels between clips.
    embed : bool, default=True
        Return a self-contained HTML/JavaScript player (``to_jshtml``; no
        ffmpeg needed). Otherwise return the
        :class:`matplotlib.animation.FuncAnimation`.

    Returns
    -------
    html : str or matplotlib.animation.FuncAnimation
        Display the string with ``IPython.display.HTML(html)``.
    """
    from matplotlib.animation import FuncAnimation

    video = np.asarray(video)
    if video.ndim == 4:
        video = video[None]
    video = _check_video(video, 5, "video", "animate")
    N, T, _, H, W = video.shape
    # frames (T, H, N*(W+gap)-gap, 3): the clips side by side in every frame
    frames = np.full((T, H, N, W + gap, 3), GAP_VALUE, dtype=video.dtype)
    frames[:, :, :, :W] = _hwc(video).transpose(1, 2, 0, 3, 4)
    frames = frames.reshape(T, H, N * (W + gap), 3)[:, :, :N * (W + gap) - gap]
    dpi = 100
    top = 18 if titles else 0
    h_px, w_px = frames.shape[1] * scale, frames.shape[2] * scale
    fig = Figure(figsize=(w_px / dpi, (h_px + top) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, h_px / (h_px + top)))
    ax.set_axis_off()
    im = ax.imshow(frames[0], interpolation="nearest")
    if titles:
        for k, name in enumerate(titles):
            x = (k * (W + gap) + W / 2) / frames.shape[2]
            fig.text(x, 1 - 0.5 * top / (h_px + top), str(name), ha="center", va="center",
                     fontsize=8)
    label = ax.text(2, 2, "", color="w", fontsize=7, va="top", ha="left")

    def _update(k):
        im.set_data(frames[k])
        label.set_text(f"t={k}")
        return im, label

    anim = FuncAnimation(fig, _update, frames=T, interval=1000.0 / fps, blit=False)
    if not embed:
        return anim
    return anim.to_jshtml(fps=fps, default_mode="loop")


# ---------------------------------------------------------------- parameters
#: In-plane basis vectors of circles and helices: they only fix where the
#: phase starts, so their histograms say nothing about the motion.
_BASIS_PARAMS = ("a", "b")


def _features(params_list):
    """Scalar features of a list of parameter dicts of one class.

    Scalars are kept; 3-vectors become their norm (``|v|``), or their Z
    component (``axis_z``) when they are unit vectors (directions);
    constant features and the basis vectors ``a``, ``b`` are dropped.
    """
    names = [k for k in params_list[0] if k not in _BASIS_PARAMS]
    out = {}
    for name in names:
        vals = np.asarray([p[name] for p in params_list], dtype=np.float64)
        if vals.ndim == 1:
            feats = {name: vals}
        else:
            norms = np.linalg.norm(vals, axis=-1)
            if np.allclose(norms, 1.0):
                feats = {f"{name}_z": vals[:, 2]}
            else:
                feats = {f"|{name}|": norms}
        for key, x in feats.items():
            if np.ptp(x) > 1e-12 * max(1.0, float(np.abs(x).max())):
                out[key] = x
    return out


def parameter_histograms(records, *, bins=20, class_names=None):
    """Histograms of the drawn trajectory parameters, one row per class.

    Parameters
    ----------
    records : sequence of dict
        Per-sample annotation records as returned by
        ``make_trajectories(..., return_annotations=True)["records"]`` or
        read from ``annotations.jsonl``: each has ``"class"`` and
        ``"params"`` (name to float or list of 3 floats).
    bins : int, default=20
    class_names : sequence of str, optional
        The dataset's classes (label order), fixing rows and colours;
        default: rows sorted by the records' ``label``.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Notes
    -----
    Vector parameters are summarised by their norm, or by their Z
    component for unit vectors (e.g. ``axis_z`` near +-1 is a helix axis
    near world Z; ``normal_z`` is the tilt of a circle's plane). Constant
    parameters (e.g. gravity) and the in-plane basis vectors ``a``, ``b``
    are omitted. Colours match :func:`class_colors` by label.
    """
    by_class, label_of = {}, {}
    for rec in records:
        by_class.setdefault(rec["class"], []).append(rec["params"])
        label_of.setdefault(rec["class"], int(rec.get("label", len(label_of))))
    if not by_class:
        raise ValueError("The 'records' parameter of parameter_histograms must be a "
                         "non-empty sequence of annotation records. Got [] instead.")
    if class_names is None:
        order = sorted(by_class, key=label_of.get)
        colors = class_colors(max(label_of.values()) + 1)[[label_of[c] for c in order]]
    else:
        order = [c for c in class_names if c in by_class]
        colors = class_colors(len(class_names))[[list(class_names).index(c) for c in order]]
    feats = {c: _features(by_class[c]) for c in order}
    ncol = max(1, max(len(f) for f in feats.values()))
    fig = Figure(figsize=(2.6 * ncol, 2.1 * len(order)), layout="constrained")
    axes = fig.subplots(len(order), ncol, squeeze=False)
    for r, c in enumerate(order):
        for k in range(ncol):
            ax = axes[r, k]
            if k >= len(feats[c]):
                ax.set_axis_off()
                continue
            name, x = list(feats[c].items())[k]
            ax.hist(x, bins=bins, color=colors[r], alpha=0.85)
            ax.set_title(f"{c}: {name}", fontsize="small")
            ax.tick_params(labelsize="x-small")
        axes[r, 0].set_ylabel(f"{c}\n(n={len(by_class[c])})")
    return fig


# ---------------------------------------------------------------- rejections
def plot_rejections(manifest, ax=None, *, title=None):
    """Redrawn (rejected) draws per class, from a run's ``manifest.json``.

    A draw is rejected, and redrawn from the sample's own stream, when its
    dot would leave the frame or move too little (see
    :class:`trajlab.DatasetSpec`). The bar is the rejection rate,
    ``rejections / (rejections + kept)``; the label gives the counts.

    Parameters
    ----------
    manifest : dict
        ``TrajectoryData.manifest`` (needs ``class_names``,
        ``class_counts`` and ``rejections``).
    ax : matplotlib.axes.Axes, optional
    title : str, optional

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    try:
        names = list(manifest["class_names"])
        rej = np.array([manifest["rejections"][c] for c in names], dtype=np.float64)
        kept = np.array([manifest["class_counts"][c] for c in names], dtype=np.float64)
    except (KeyError, TypeError):
        raise ValueError("The 'manifest' parameter of plot_rejections must be a run manifest "
                         "with 'class_names', 'class_counts' and 'rejections'. "
                         f"Got {type(manifest).__name__} instead.") from None
    rate = 100.0 * rej / np.maximum(1.0, rej + kept)
    fig, ax = _new_axes(ax, (1.2 + 1.3 * len(names), 3.2))
    x = np.arange(len(names))
    ax.bar(x, rate, color=class_colors(len(names)), alpha=0.85)
    for k in range(len(names)):
        ax.annotate(f"{int(rej[k]):,} of {int(rej[k] + kept[k]):,} draws", (x[k], rate[k]),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize="x-small")
    ax.set_xticks(x, names)
    ax.set_ylabel("rejected draws (%)")
    ax.set_ylim(0, max(1.0, float(rate.max()) * 1.25))
    ax.set_title(title or "rejected (redrawn) draws per class")
    return fig

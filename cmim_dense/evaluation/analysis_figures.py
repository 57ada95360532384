"""The figures of the analysis (:mod:`cmim_dense.evaluation.analysis`): ``tsne.png``,
``similarity.png`` and ``layers.png``, drawn from the numbers it measures."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cmim_dense.evaluation.analysis import GAP_FLOOR, PANELS_PER_ROW


# -- figures -------------------------------------------------------------------------------------
def class_colours(num: int) -> np.ndarray:
    """(num, 4) RGBA: tab10 / tab20 for up to 10 / 20 classes, else evenly spaced turbo."""
    for limit, name in ((10, "tab10"), (20, "tab20")):
        if num <= limit:
            return matplotlib.colormaps[name](np.arange(num))
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, num))


def _class_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes of class-sorted ``labels`` (C,) and their [start, stop) bounds (C + 1,)."""
    change = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, change]
    return labels[starts], np.r_[starts, len(labels)]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _panel_grid(
    num: int, width: float, height: float, extra_width: float = 0.0
) -> tuple[Figure, list]:
    """A figure of ``num`` panels side by side, wrapped after ``PANELS_PER_ROW``; the
    panels' axes in reading order (unused grid cells are hidden)."""
    cols = min(num, PANELS_PER_ROW)
    rows = -(-num // cols)
    fig = _new_figure(width * cols + extra_width, height * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[num:]:
        ax.set_visible(False)
    return fig, list(axes[:num])


def tsne_figure(
    coords: Sequence[np.ndarray],
    labels: np.ndarray,
    names: Sequence[str],
    class_names: Sequence[str],
    feature_note: str,
) -> Figure:
    """Fig. 3: one t-SNE panel per checkpoint, (N, 2) coordinates coloured by class."""
    classes = np.unique(labels)
    colours = class_colours(len(classes))
    colour_of = {c: colours[i] for i, c in enumerate(classes)}
    fig, axes = _panel_grid(len(coords), 3.6, 3.6, extra_width=1.8)
    for ax, xy, name in zip(axes, coords, names):
        for c in classes:
            keep = labels == c
            ax.scatter(*xy[keep].T, s=9, color=colour_of[c], linewidths=0, alpha=0.85)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(f"t-SNE of the last stage's binary activations\n({feature_note})", fontsize=10)
    if len(classes) <= 20:
        handles = [
            Line2D([], [], ls="", marker="o", ms=5, color=colour_of[c], label=class_names[c])
            for c in classes
        ]
        fig.legend(handles=handles, loc="outside right center", fontsize=8, title="class")
    return fig


def similarity_figure(
    matrices: Sequence[np.ndarray], labels: np.ndarray, names: Sequence[str], class_names
) -> Figure:
    """Fig. 4 (a-d): the (N, N) class-sorted cosine similarities, one panel per checkpoint,
    one colour scale, white lines between classes."""
    classes, bounds = _class_runs(labels)
    vmin = min(0.0, float(min(m.min() for m in matrices)))
    fig, axes = _panel_grid(len(matrices), 3.9, 4.0, extra_width=1.0)
    centres = (bounds[:-1] + bounds[1:]) / 2 - 0.5
    tick_labels = [class_names[c] for c in classes] if len(classes) <= 20 else None
    image = None
    for ax, sim, name in zip(axes, matrices, names):
        image = ax.imshow(sim, cmap="viridis", vmin=vmin, vmax=1.0, interpolation="nearest")
        for b in bounds[1:-1]:
            ax.axhline(b - 0.5, color="white", lw=0.7)
            ax.axvline(b - 0.5, color="white", lw=0.7)
        ax.set_title(name, fontsize=10)
        if tick_labels is not None:
            ax.set_xticks(centres, tick_labels, rotation=90, fontsize=7)
            ax.set_yticks(centres, tick_labels, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.85, label="cosine similarity")
    fig.suptitle(
        f"Cosine similarity of last-stage binary activations\n{len(labels)} test images "
        "sorted by class",
        fontsize=10,
    )
    return fig


def layers_figure(
    layer_labels: Sequence[str],
    names: Sequence[str],
    entry_info: Sequence[np.ndarray],
    mi_gaps: Sequence[np.ndarray],
    plus_fractions: Sequence[np.ndarray],
    flips: Sequence[tuple[str, np.ndarray, int]],
    mi_ceiling: float,
    num_images: int,
    distinct_codes: Sequence[Sequence[int]],
) -> Figure:
    """Per tapped layer (x), one line per checkpoint (each (K,)): (a) the information per
    binary entry, H(a_B^d) = I(a_B^d; a_F^d) in bits, (b) the Eq. 9 bound's gap to its
    log(N - 1) ceiling on a log scale, (c) the fraction of +1 and (d) the sign-flip rate of
    ``flips``: (label, (K,) rates, index of the later checkpoint) between consecutive
    checkpoints of one run. A caption says why the Eq. 9 bound itself is not drawn: with
    ``num_images`` images and ``distinct_codes`` (per checkpoint, (K,)) the whole-vector MI is
    log N, above the ceiling of any N-sample bound."""
    fig = _new_figure(11.5, 7.8)
    axes = fig.subplots(2, 2).ravel()
    x = np.arange(len(layer_labels))
    line_colours = _line_colours(len(names))
    for i, name in enumerate(names):
        style = dict(color=line_colours[i], marker="o", ms=4, label=name)
        axes[0].plot(x, entry_info[i], **style)
        axes[1].plot(x, np.maximum(mi_gaps[i], GAP_FLOOR), **style)
        axes[2].plot(x, plus_fractions[i], **style)
    _label_layer_panels(axes[:3])
    _flip_panel(axes[3], x, flips, line_colours)
    for ax in axes[: 4 if flips else 3]:
        ax.set_xticks(x, layer_labels, fontsize=8)
        ax.set_xlabel("tapped layer: last binary conv of stage", fontsize=8)
        ax.grid(alpha=0.3)
    handles = axes[2].get_lines()[: len(names)]
    fig.legend(handles, names, loc="outside right center", fontsize=8, title="checkpoint")
    fewest = min(min(codes) for codes in distinct_codes)
    fig.supxlabel(  # a caption under the panels, in the space constrained layout keeps for it
        "The Eq. 9 bound is not drawn as a value: a_B = sign(a_F) is a function of a_F, so "
        f"I(a_B; a_F) = H(a_B), which on N = {num_images} images is log N when their codes all "
        f"differ (here at least {fewest} of {num_images} codes differ per layer),\n"
        f"above the log(N-1) = {mi_ceiling:.3f} nats ceiling of any N-sample contrastive bound: "
        "every checkpoint's bound sits at it, and only its gap (b) differs. "
        "(a) is the exact MI per entry, below its 1-bit ceiling where entries are unbalanced.",
        x=0.01,
        ha="left",
        fontsize=7,
    )
    return fig


def _label_layer_panels(axes: Sequence) -> None:
    """Reference lines, limits, units and titles of :func:`layers_figure`'s panels (a)-(c)."""
    axes[0].axhline(1.0, color="grey", ls="--", lw=0.8)
    axes[0].set_ylim(top=1.02)
    axes[0].set_ylabel("bits per entry (at most 1)")
    axes[0].set_title("(a) information per binary entry, H(a_B^d) = I(a_B^d; a_F^d)", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"nats (floor {GAP_FLOOR:g})")
    axes[1].set_title("(b) Eq. 9 bound: gap to its log(N-1) ceiling, -E_pos[log h]", fontsize=10)
    axes[2].axhline(0.5, color="grey", ls=":", lw=0.8)
    axes[2].set_ylim(0.0, 1.0)
    axes[2].set_ylabel("fraction")
    axes[2].set_title("(c) fraction of +1 activations", fontsize=10)


def _flip_panel(ax, x: np.ndarray, flips: Sequence[tuple[str, np.ndarray, int]], colours) -> None:
    """Panel (d) of :func:`layers_figure`: each sign-flip rate (K,) at layer positions ``x``
    (K,), in ``colours[later]``; without ``flips``, the panel off with a note saying why."""
    if flips:
        for label, rate, later in flips:  # coloured as the later checkpoint
            ax.plot(x, rate, color=colours[later], marker="o", ms=4, label=label)
        ax.set_ylim(bottom=0.0)
        ax.set_ylabel("fraction")
        ax.set_title("(d) sign-flip rate, consecutive checkpoints of one run", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    else:
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            "(d) sign flips need 2 or more checkpoints of one run\n"
            "(files of one folder, in training order); runs are not compared",
            ha="center",
            va="center",
            fontsize=9,
        )


def _line_colours(num: int) -> list:
    """tab10 for up to 10 lines, else a viridis sequence (e.g. epochs in training order)."""
    if num <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:num])
    return list(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, num)))

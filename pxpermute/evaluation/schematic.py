"""The method schematic computed from a model: PXPermute, the cross-sample swap and occlusion on one cell."""
from __future__ import annotations

from ..importance import channel_importance
from ..plotting import plot_method_schematic


def method_schematic(dataset, model, *, n_repeats: int = 10, device=None, fill_value: float = 0.0,
                     random_state: int | None = 0, **plot_kwargs):
    """Score ``model`` on ``dataset`` under the three perturbations and draw the method on one cell.

    Runs :func:`pxpermute.channel_importance` with ``perturbation`` = ``"pixel"``, ``"sample"`` and
    ``"fill"`` (``n_repeats`` each, the same ``random_state``) and passes the three results to
    :func:`pxpermute.plotting.plot_method_schematic`, whose row labels then read out the F1 drop
    of the perturbed channel with its interval.

    Parameters
    ----------
    dataset : IFCDataset
        Cells to score and to draw one cell from.
    model : classifier
        Any model :func:`~pxpermute.channel_importance` accepts.
    n_repeats : int, default 10
        k of each perturbation.
    device, fill_value, random_state :
        Passed to :func:`~pxpermute.channel_importance` (``random_state`` also picks the cell).
    **plot_kwargs
        ``channel``, ``index``, ``donor``, ``percentiles``, ``panel_size``, ``title``.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import torch
    >>> from pxpermute.datasets import make_synthetic
    >>> ds = make_synthetic("default", n_samples=40, image_size=16)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(ds.n_channels * 256, ds.n_classes))
    >>> fig = method_schematic(ds, model, n_repeats=2, channel=0)
    >>> len(fig.axes) == 4 * ds.n_channels
    True
    """
    results = {p: channel_importance(  # a warning shows this line: keep it short
                   model, dataset, n_repeats=n_repeats, perturbation=p, random_state=random_state, device=device,
                   fill_value=fill_value, progress=False)
               for p in ("pixel", "sample", "fill")}
    return plot_method_schematic(dataset, results=results, fill_value=fill_value, random_state=random_state,
                                 **plot_kwargs)

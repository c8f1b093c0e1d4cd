"""Training curves in the terminal: loss and a method's own metrics, from progress events.

One :class:`Curves` widget draws named series of (step, value) points with textual-plotext. The
training screen feeds it live events; the registry screen feeds it a version's stored step log.
Which series to draw is decided here, once, from the events themselves: the loss (and eval loss),
or the method's metrics from ``ProgressEvent.metrics`` (step events only), preferring the names
practitioners watch (reward margin, reward, KL) when a run reports more than fit.

Redrawing plotext on every event would cost more than the training step on a tiny model, so
points are appended at once but the widget repaints at most :attr:`Curves.FPS` times a second.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual_plotext import PlotextPlot

from adapterhub.core.progress import ProgressEvent

_PREFERRED = ("margin", "reward", "kl", "accura", "score")


def pick_metrics(names: Iterable[str], limit: int) -> list[str]:
    """Up to ``limit`` metric names to plot: one per preferred word (reward margin, reward, KL,
    accuracy, score) in that order, shortest name first, then the rest alphabetically."""
    pool = sorted(set(names), key=lambda n: (len(n), n))
    picked: list[str] = []
    for word in _PREFERRED:
        match = next((n for n in pool if word in n.lower() and n not in picked), None)
        if match is not None:
            picked.append(match)
    picked += sorted(n for n in pool if n not in picked)
    return picked[:limit]


class Curves(PlotextPlot):
    """A plot of named series over training steps.

    Args:
        title: shown above the plot.
        which: ``"loss"`` draws the loss; ``"metrics"`` draws up to ``max_series`` method metrics.
    """

    FPS = 4
    DEFAULT_CSS = """
    Curves { height: 1fr; min-height: 5; }
    """

    def __init__(
        self,
        title: str,
        *,
        which: str = "loss",
        max_series: int = 3,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.which = which
        self.max_series = max_series
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._dirty = False

    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(1 / self.FPS, self._repaint)
        self._replot()

    def clear(self) -> None:
        """Forget every point."""
        self.series.clear()
        self._dirty = True

    def add_events(self, events: Iterable[ProgressEvent]) -> None:
        """Append the points that ``events`` carry (only ``step`` and ``eval`` events count)."""
        for event in events:
            if self.which == "loss" and event.kind in ("step", "eval") and event.loss is not None:
                name = "eval loss" if event.kind == "eval" else "loss"
                self.series.setdefault(name, []).append((event.step, event.loss))
                self._dirty = True
            elif self.which == "metrics" and event.kind == "step":
                for name, value in event.metrics.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        self.series.setdefault(name, []).append((event.step, float(value)))
                        self._dirty = True

    def shown_series(self) -> list[str]:
        """The series the plot draws (loss: all; metrics: :func:`pick_metrics`)."""
        if self.which == "loss":
            return sorted(self.series, key=lambda n: (n != "loss", n))
        return pick_metrics(self.series, self.max_series)

    def _repaint(self) -> None:
        if self._dirty:
            self._dirty = False
            self._replot()

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        shown = self.shown_series()
        # A legend covers the top left, where a falling loss starts: the loss plot names its
        # series in the title instead (train first, eval second in plotext's colour order).
        legend = self.which != "loss" and len(shown) > 1
        for name in shown:
            points = self.series[name]
            plt.plot(
                [x for x, _ in points],
                [y for _, y in points],
                label=name if legend else None,
                marker="hd",
            )
        if not shown:
            plt.title(f"{self.title} (no data yet)")
        elif self.which == "loss":
            plt.title(" / ".join(shown))
        else:
            plt.title(self.title)
        self.refresh()

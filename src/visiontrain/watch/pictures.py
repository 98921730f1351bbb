"""Pictures of a run, per epoch into TensorBoard and at the end as PNG files in ``<run>/plots/``:
the confusion matrix (row-normalized and counts), the most confident mistakes with true/predicted
labels, and the loss/accuracy curves. ``--plots off`` (``train.plots: false``) leaves this callback out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visiontrain.engine.callbacks import Callback
from visiontrain.engine.state import TrainState
from visiontrain.watch.tensorboard import TensorBoardLogger


class Pictures(Callback):
    order = "observe"

    def __init__(self, folder: Path, tensorboard: TensorBoardLogger) -> None:
        self.folder, self.tb = folder, tensorboard
        self.history: list[dict[str, float]] = []
        self.last_full: dict[str, Any] | None = None
        self.last_epoch = 0  # the epoch whose model last_full measured

    def on_epoch_end(self, state: TrainState) -> None:
        from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

        m = state.epoch_metrics
        self.history.append({"epoch": state.epoch, **{k: v for k, v in m.items() if isinstance(v, float)}})
        full = m.get(f"{state.eval_split}/_full") if state.eval_split else None
        if full is not None and "scores" in full and self.tb.writer is not None:  # multi-label: PR curves
            self.last_full, self.last_epoch = full, state.epoch
            figure = plots.pr_curves_figure(full["scores"], full["targets"], state.classes,
                                            full["tuned_thresholds"], f"{state.eval_split} split · epoch {state.epoch}")
            self.tb.writer.add_image(f"{state.eval_split}/pr_curves", plots.figure_image(figure), state.step,
                                     dataformats="HWC")
            return
        if full is None or "confusion" not in full or self.tb.writer is None:
            return
        self.last_full, self.last_epoch = full, state.epoch
        figure = plots.confusion_figure(full["confusion"], state.classes,
                                        source=f"{state.eval_split} split · epoch {state.epoch}")
        self.tb.writer.add_image(f"{state.eval_split}/confusion_matrix", plots.figure_image(figure), state.step,
                                 dataformats="HWC")
        worst = full.get("mistakes")
        if worst and worst["true"]:  # raw images + captions: cheap enough for every epoch
            self.tb.writer.add_images(f"{state.eval_split}/mistakes", worst["images"], state.step)
            names = state.classes
            triples = zip(worst["true"], worst["pred"], worst["confidence"], strict=True)
            captions = [f"{i}: true {names[t]}, predicted {names[p]} ({c:.2f})" for i, (t, p, c) in enumerate(triples)]
            self.tb.writer.add_text(f"{state.eval_split}/mistakes", "  \n".join(captions), state.step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}  # the curves span the whole run, resumes included

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))

    def on_fit_end(self, state: TrainState) -> None:
        if not self.history or state.error is not None:  # no curves drawn from a run that just failed
            return
        from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

        self.folder.mkdir(exist_ok=True)
        epochs = [h["epoch"] for h in self.history]
        split = state.eval_split or "train"
        for name in ("loss", "accuracy", "map", "mae"):
            ys = {f"{s}/{name}": [h.get(f"{s}/{name}", float("nan")) for h in self.history]
                  for s in ("train", split) if any(f"{s}/{name}" in h for h in self.history)}
            if not ys:
                continue
            plots.save_png(plots.curve_figure(epochs, ys, "epoch", name, f"{name} per epoch", integer_x=True),
                           self.folder / f"{name}.png")
        if self.last_full is not None and "scores" in self.last_full:
            plots.save_png(plots.pr_curves_figure(self.last_full["scores"], self.last_full["targets"], state.classes,
                                                  self.last_full["tuned_thresholds"], self._source(split, state)),
                           self.folder / "pr_curves.png")
        elif self.last_full is not None:
            source = self._source(split, state)
            for normalize, suffix in ((True, ""), (False, "_counts")):
                fig = plots.confusion_figure(self.last_full["confusion"], state.classes, normalize=normalize,
                                             source=source)
                plots.save_png(fig, self.folder / f"confusion_matrix{suffix}.png")
            grid = self._mistakes(self.last_full, state, source)
            if grid is not None:
                plots.save_png(grid, self.folder / "mistakes.png")

    def _source(self, split: str, state: TrainState) -> str:
        """What the last matrix counted: the split, the epoch, and the checkpoint holding that model."""
        source = f"{split} split · epoch {self.last_epoch}"
        if self.last_epoch == state.epoch and state.batch_in_epoch == 0:  # no steps since: last holds this model
            best = state.best is not None and state.best.get("epoch") == self.last_epoch
            source += " · checkpoint last" + (" (= best)" if best else "")
        return source

    @staticmethod
    def _mistakes(full: dict[str, Any], state: TrainState, source: str) -> Any:
        from visiontrain.watch import plots  # matplotlib: loaded when a picture is drawn

        worst = full.get("mistakes")
        if not worst or not worst["true"]:
            return None
        names = state.classes
        captions = [f"true {names[t][:10]}\npred {names[p][:10]} ({c:.2f})"
                    for t, p, c in zip(worst["true"], worst["pred"], worst["confidence"], strict=True)]
        return plots.image_grid_figure(worst["images"], captions, f"most confident mistakes ({source})")

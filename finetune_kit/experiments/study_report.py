"""The Optuna study of a sweep in ``analyze``: trial states joined to the run folders, and
Optuna's own analyses (parameter importances, optimization history, parallel coordinates,
contour of the two most important parameters) drawn with ``optuna.visualization.matplotlib``.

A sweep folder holds its study in ``optuna.db`` (:mod:`finetune_kit.experiments.sweep.runner`);
a study in another storage (PostgreSQL) is named with ``analyze --storage URL --study NAME``.
Each trial records its run folder in the user attribute ``run_dir``; the run folders are what
:func:`~finetune_kit.experiments.results.load_runs` reads.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["find_study", "join_trials", "study_figures", "study_section"]

_STUDY_DB = "optuna.db"  # the sweep's default storage (sweep.config.STUDY_DB)


def find_study(runs_dir: str | Path, storage: str | None = None, study: str | None = None) -> Any:
    """The study of a sweep folder, or None when there is none.

    Args:
        runs_dir: the folder ``analyze`` reads; its ``optuna.db`` is the default storage.
        storage: an Optuna storage URL (default ``sqlite:///RUNS_DIR/optuna.db`` when that file exists).
        study: the study's name (default: the only study there, else the one named like ``runs_dir``).

    Raises:
        ValueError: ``storage`` or ``study`` given but not found (lists the studies there are),
            or several studies and none named like the folder.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    runs_dir = Path(runs_dir)
    if storage is None:
        db = runs_dir / _STUDY_DB
        if not db.is_file():
            if study:
                raise ValueError(f"--study {study}: {runs_dir} holds no {_STUDY_DB}; pass --storage URL")
            return None
        storage = f"sqlite:///{db.resolve()}"
    try:
        names = optuna.study.get_all_study_names(storage)
    except Exception as exc:  # noqa: BLE001 - driver/sqlalchemy errors, re-raised with the URL
        raise ValueError(f"cannot read studies from {storage.split('@')[-1]}: {type(exc).__name__}: {exc}") from exc
    if study is None:
        study = names[0] if len(names) == 1 else runs_dir.resolve().name if runs_dir.resolve().name in names else None
        if study is None:
            if not names:
                return None
            raise ValueError(f"several studies in the storage: {', '.join(names)}; pass --study NAME")
    if study not in names:
        raise ValueError(f"no study {study!r} in the storage; studies there: {', '.join(names) or '(none)'}")
    return optuna.load_study(study_name=study, storage=storage)


def join_trials(df: pd.DataFrame, study: Any) -> pd.DataFrame:
    """``df`` (the runs table) with ``trial.number``, ``trial.state`` and ``trial.value``
    columns for the rows that are a trial's run folder (matched on ``path``)."""
    by_dir = {str(Path(t.user_attrs["run_dir"]).resolve()): t for t in study.get_trials(deepcopy=False)
              if t.user_attrs.get("run_dir")}
    out = df.copy()
    rows = [by_dir.get(str(Path(p).resolve())) for p in out["path"]]
    out["trial.number"] = [t.number if t else None for t in rows]
    out["trial.state"] = [t.state.name.lower() if t else None for t in rows]
    out["trial.value"] = [t.value if t and t.state.name == "COMPLETE" else None for t in rows]
    return out


def _importances(study: Any) -> dict[str, float]:
    import optuna

    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def study_figures(study: Any, out: str | Path, prefix: str = "optuna_") -> list[str]:
    """Draw Optuna's analyses of ``study`` into ``out`` as PNGs; returns the file names written.

    ``optuna_history.png`` (objective per trial and best so far), ``optuna_importances.png``
    (fANOVA importances; needs 2+ completed trials), ``optuna_parallel.png`` (parallel
    coordinates) and ``optuna_contour.png`` (the two most important parameters; needs two).
    A figure Optuna cannot draw for this study is skipped. Never opens a window.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = Path(out)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    top = list(_importances(study))[:2] if len(complete) >= 2 else []
    if len(top) < 2:
        top = [n for n in complete[0].params][:2]
    plans = [("history", lambda: ovm.plot_optimization_history(study))]
    if len(complete) >= 2:
        plans += [("importances", lambda: ovm.plot_param_importances(study)),
                  ("parallel", lambda: ovm.plot_parallel_coordinate(study))]
        if len(top) == 2:
            plans.append(("contour", lambda: ovm.plot_contour(study, params=top)))
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in plans:
            try:
                ax = draw()
            except Exception:  # noqa: BLE001 - a figure Optuna cannot draw for this study is left out
                plt.close("all")
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            fig.savefig(out / f"{prefix}{name}.png", dpi=90)
            plt.close("all")
            written.append(f"{prefix}{name}.png")
    return written


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def study_section(study: Any, figures: list[str] = ()) -> str:
    """Markdown: the study's trials by state, best trial, parameter importances, every trial
    (state, parameters, value, run folder, error) and ``figures`` (file names beside the report)."""
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    lines = [f"## Optuna study `{study.study_name}`", "",
             f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
             + f"; direction {study.direction.name.lower()}.", ""]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        b = study.best_trial
        lines += [f"Best: trial {b.number} ({b.user_attrs.get('tag', '')}), value {_fmt(b.value)}, "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items()) + ".", ""]
    imp = _importances(study) if len(complete) >= 2 else {}
    if imp:
        lines += ["Parameter importances (fANOVA):", "", "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in imp.items()] + [""]
    names = list(dict.fromkeys(k for t in trials for k in t.params))
    lines += ["| trial | state | " + " | ".join(names) + " | value | run | note |",
              "|" + "---|" * (len(names) + 5)]
    for t in trials:
        run = Path(t.user_attrs["run_dir"]).name if t.user_attrs.get("run_dir") else "-"
        note = str(t.user_attrs.get("error") or "")
        if t.system_attrs.get("retry_history") or t.system_attrs.get("requeued_from") is not None:
            note = (note + "; " if note else "") + "re-run of trial " + str(
                t.system_attrs.get("requeued_from", (t.system_attrs.get("retry_history") or ["?"])[-1]))
        value = _fmt(t.value) if t.value is not None and t.state.name in ("COMPLETE", "PRUNED") else "-"
        lines.append(f"| {t.number} | {t.state.name.lower()} | " + " | ".join(_fmt(t.params.get(n, "-")) for n in names)
                     + f" | {value} | {run} | {note.replace('|', '/')[:120]} |")
    lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"

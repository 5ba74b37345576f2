"""The end of a classification run's forgetting work, after ``metrics.json`` is written: the external
(shifted) data evaluated like the test set, and WiSE-FT (both read the written run folder)."""
from __future__ import annotations

from finetune_kit.tasks.classification.config import DataConfig
from finetune_kit.tasks.classification.evaluate import evaluate_run
from finetune_kit.tasks.classification.wise_ft import run_wise_ft

__all__ = ["finish_forgetting"]


def finish_forgetting(state, result: dict) -> dict:
    """After ``metrics.json`` is written: evaluate ``forgetting.external_data`` with the test metrics and
    the run's calibrator (``RUN/eval-external``), and run WiSE-FT with ``forgetting.wise_ft``; both go
    into ``result`` (and ``metrics.json`` is written again).

    Returns:
        ``result`` with ``"external"`` and/or ``"wise_ft"`` added.
    """
    cfg = state.cfg
    if not (cfg.forgetting.external_data or cfg.forgetting.wise_ft):
        return result
    if cfg.forgetting.external_data:
        dc = DataConfig(**{**cfg.data.model_dump(), "data": cfg.forgetting.external_data})
        res = evaluate_run(state.run.path, dc, name="external", device=cfg.runtime.device)
        m = res["metrics"]
        result["external"] = {"data": cfg.forgetting.external_data, "n_images": res["n_images"], "metrics": m}
        state.console.print(f"external data: AUROC {m.get('auroc', float('nan')):.4f} accuracy "
                            f"{m.get('accuracy', float('nan')):.4f} on {res['n_images']} images (test AUROC "
                            f"{result['test'].get('auroc', float('nan')):.4f})")
    if cfg.forgetting.wise_ft:
        w = run_wise_ft(state.run.path, alphas=cfg.forgetting.wise_ft_alphas, device=cfg.runtime.device,
                        console=state.console)
        result["wise_ft"] = {k: w[k] for k in ("run_dir", "alpha", "grid", "test")}
    state.run.write_json("metrics.json", result)
    return result

"""``finetune-kit analyze`` and ``finetune-kit sweep`` through the real typer app."""
from __future__ import annotations

from typer.testing import CliRunner

from finetune_kit.tasks.cli import app

runner = CliRunner()


def test_analyze_writes_report_csv_and_figures(grid_runs, tmp_path):
    root, _ = grid_runs
    out = tmp_path / "out"
    r = runner.invoke(app, ["analyze", str(root), "--metric", "test_auroc", "--group-by", "strategy",
                            "--heatmap", "lr", "strategy", "--compare-param", "lr", "--top-k", "2",
                            "--stale-after", "0", "--output", str(out)])
    assert r.exit_code == 0, r.output
    report = (out / "report.md").read_text()
    assert "## Top 2 runs per `ft_strategy`" in report and "| zz-crashed | crashed |" in report
    assert (out / "runs.csv").read_text().count("\n") == 15  # header + 14 runs
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["compare_final.test_auroc_vs_learning_rate.png", "curves_val_auroc.png",
                    "heatmap_final.test_auroc_ft_strategy_x_learning_rate.png"]
    assert all(f"]({p})" in report for p in pngs)


def test_analyze_heatmap_per_group_and_where(grid_runs, tmp_path):
    root, _ = grid_runs
    r = runner.invoke(app, ["analyze", str(root), "-m", "best.val_loss", "-g", "strategy",
                            "--heatmap", "lr", "seed", "--where", "ft_strategy=full", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "lower is better" in r.output
    assert [p.name for p in (tmp_path / "o").glob("heatmap*")] == [
        "heatmap_best.val_loss_seed_x_learning_rate_ft_strategy=full.png"]
    assert "linear-lr" not in (tmp_path / "o" / "report.md").read_text()


def test_analyze_default_metric_and_errors(grid_runs, tmp_path):
    root, _ = grid_runs
    r = runner.invoke(app, ["analyze", str(root), "-o", str(tmp_path / "d")])
    assert r.exit_code == 0 and "metric: `final.test_auroc`" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["analyze", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "has no run folders" in r.output
    r = runner.invoke(app, ["analyze", str(root), "--metric", "psnr", "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "available metric columns:" in r.output and "final.test_auroc" in r.output
    r = runner.invoke(app, ["analyze", str(root), "--group-by", "gamma", "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "parameter 'gamma' not found" in r.output
    r = runner.invoke(app, ["analyze", str(root), "--where", "lr=0.5", "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "values present" in r.output


def test_sweep_cli_builds_config_with_pass_through(tmp_path, monkeypatch):
    import finetune_kit.experiments.sweep.runner as sweep_mod

    seen = {}

    def fake_run(cfg, echo):
        seen["cfg"] = cfg
        return []

    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run)
    space = tmp_path / "s.yaml"
    space.write_text("params:\n  llrd_decay: [0.7, 0.9]\nfixed: {num_epochs: 2}\ntrials: 3\n")
    r = runner.invoke(app, ["sweep", "--space", str(space), "--param", "ft_strategy=linear,full",
                            "--output_dir", str(tmp_path / "sw"), "--parallel", "2", "--pruner", "sha", "--",
                            "--data", "/x/images", "--wandb", "disabled"])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert cfg.task == "classification" and cfg.method == "grid" and cfg.trials == 3 and cfg.workers == 2
    assert cfg.pruner == "sha" and cfg.study == "sw" and cfg.storage == f"sqlite:///{(tmp_path / 'sw').resolve()}/optuna.db"
    assert cfg.space.names == ["llrd_decay", "ft_strategy"]
    assert cfg.fixed_args == ["--num_epochs", "2", "--data", "/x/images", "--wandb", "disabled"]
    assert cfg.metric == "val_auroc" and cfg.mode == "max"
    assert cfg.command[-1] == "classify"
    r = runner.invoke(app, ["sweep", "--task", "segmentation", "--param", "a=1,2", "--output_dir", str(tmp_path)])
    assert r.exit_code == 2 and "unknown task 'segmentation'" in r.output
    r = runner.invoke(app, ["sweep", "--method", "tpe", "--workers", "3", "--storage", "postgresql+psycopg://h/db",
                            "--study", "s1", "--param", "learning_rate=loguniform(1e-5,1e-2)", "--output_dir",
                            str(tmp_path / "sw")])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.method, cfg.workers, cfg.storage, cfg.study, cfg.trials) == ("tpe", 3, "postgresql+psycopg://h/db", "s1", 10)
    assert (cfg.space.params[0].kind, cfg.space.params[0].log) == ("float", True)
    r = runner.invoke(app, ["sweep", "--param", "learning_rate=loguniform:1e-5:1e-2", "--output_dir", str(tmp_path)])
    assert r.exit_code == 2 and "grid search needs a list of values for learning_rate" in r.output
    r = runner.invoke(app, ["sweep", "--param", "lrr=1e-3,1e-2", "--output_dir", str(tmp_path)])
    assert r.exit_code == 2 and "the task command 'classify' has no option --lrr" in r.output


def test_sweep_cli_for_compression_finetune_defaults_and_flags(tmp_path, monkeypatch):
    import finetune_kit.experiments.sweep.runner as sweep_mod
    from finetune_kit.experiments.sweep.space import to_flags

    seen = {}
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda cfg, echo: seen.setdefault("cfg", cfg) and [])
    r = runner.invoke(app, ["sweep", "--task", "compression-finetune", "--param", "use_balanced=true,false",
                            "--param", "progress=false", "--output_dir", str(tmp_path / "sw")])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.metric, cfg.mode, cfg.prune_metric) == ("val_rd", "min", "val_rd")  # what the task logs
    argvs = [to_flags({"use_balanced": u, "progress": False}, cfg.task_cli) for u in cfg.space.grid()["use_balanced"]]
    assert argvs == [["--use_balanced", "--no-progress"], ["--no-use-balanced", "--no-progress"]]
    for argv in argvs:  # the real command accepts them
        cfg.task_cli.make_context("finetune", list(argv))


def test_analyze_default_metric_of_compression_finetune_runs(tmp_path):
    from analysis_helpers import make_run

    root = tmp_path / "runs"
    for gamma, rd in ((0.004, 1.5), (0.008, 1.2), (0.016, 1.4)):
        hist = [{"epoch": e, "val_rd": rd + 0.1 * (1 - e), "val_bpp": 0.4, "val_psnr": 30 - rd, "lr": 1e-5}
                for e in range(2)]
        make_run(root, f"g{gamma}", {"gamma": gamma, "lmbda": 0.0018}, hist, final={**hist[-1], "lmbda": 0.0018})
    r = runner.invoke(app, ["analyze", str(root), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "metric: `final.val_rd` (lower is better)" in r.output
    report = (tmp_path / "o" / "report.md").read_text()
    assert report.index("| 1 | g0.008 |") < report.index("| 2 | g0.016 |") < report.index("| 3 | g0.004 |")
    assert (tmp_path / "o" / "curves_val_rd.png").is_file()

"""Command-line composition root (typer). Thin: parse options, build a config, call a task."""

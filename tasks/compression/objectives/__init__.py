"""The objectives below both compression commands: ``rate_distortion`` (the one R-D criterion,
registered with CompressAI), ``hierarchical`` (per-scale tasks), ``balanced`` (learned task
weights), ``gamma_schedules`` (+ ``gamma_plots``), ``objective`` (the engine objective that
combines them) and ``config`` (their option sections)."""

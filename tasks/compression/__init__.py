"""Learned image compression (HPCM on CompressAI): models, objectives, the one run of
``compress train`` and ``compress finetune``, evaluation with real bitstreams, comparisons."""
import warnings

# CompressAI's import triggers a torch.jit.script deprecation notice under torch 2.14 (not actionable)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

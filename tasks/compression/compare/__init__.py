"""``finetune-kit compress compare``: the fine-tuning workflows against fine-tune-all and from-scratch
training at the same step budget, evaluated with real bitstreams (see :mod:`.runner`)."""

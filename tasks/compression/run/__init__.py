"""The one compression run of ``compress train`` and ``compress finetune``: ``config`` (its
sections), ``source`` (random weights, a checkpoint, or a run to resume), ``build``, ``fit``
(train, validate, early stop), ``resume``, ``report``, ``training_curves`` and ``loop`` (:func:`run`)."""

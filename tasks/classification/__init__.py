"""Fundus (or any image) classification by fine-tuning timm models.

Modules: ``config`` (typed options), ``data`` (layouts, splits), ``transforms`` (decode cache,
fundus augmentation), ``model`` (timm + weights), ``engine`` (epoch loop), ``feature_cache``
(linear-probe fast path), ``train`` (a whole run), ``metrics``, ``plots``, ``evaluate``,
``compare``, ``predict``, ``synthetic`` (SYNTHETIC demo data), ``memory``.
"""

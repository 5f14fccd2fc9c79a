"""The field's distillation methods beyond Hinton KD, one module per method (its paper, its reference
implementation's defaults, its loss), each registering its distiller in ``train_kd.DISTILLERS``.

Every method here is its own numerics family (``kd_utils.numerics``): editing one retrains its runs only.
"""

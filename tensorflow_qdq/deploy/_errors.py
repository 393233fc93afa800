"""The exporters' own exception and warning (no imports: the package face loads this package
through ``deploy._grid``, and must not pull Keras with it)."""


class ExportMismatchError(ValueError):
    """The exported model, run in its runtime, disagrees with the Keras model."""


class ExportMismatchWarning(UserWarning):
    """``verify="warn"``: the exported model disagrees with the Keras model."""

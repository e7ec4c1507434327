"""Does an explanation deserve trust? The validation suite, one module per check."""

"""Every figure of the notebook, one module per part of the story."""

"""The ``imagesvc`` command and the composition root (``bootstrap``) that wires services."""

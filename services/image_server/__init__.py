"""The image server: the image store, read-only, over IMGAPI-style HTTP (reference §9.3)."""

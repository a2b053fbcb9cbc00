"""Deleter: consumes ``image.delete`` commands; removes an image.
"""

"""Importer: consumes ``image.import`` commands; fetches and validates the manifest, records the image.
"""

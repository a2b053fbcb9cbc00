"""Updater: consumes ``image.update`` commands; applies attribute changes to an image.
"""

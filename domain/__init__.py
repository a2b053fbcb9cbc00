"""The image catalogue's rules, shared by the gateway and the consumers.

Pure code: field validation with the original API's messages, manifest mapping, the image's
public shape, task ids. No broker, no SQL, no HTTP framework; data access goes through the small
protocols declared here and implemented in ``shared.db``.
"""

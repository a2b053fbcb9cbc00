"""HTTP gateway: authentication, request validation, read-model queries, publishing commands,
and waiting for a task's first decisive event. Never touches write-side state or the image store.
"""

"""The lease sweeper: ends tasks whose holder died holding an image's lease (``leases``)."""

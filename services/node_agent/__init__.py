"""The node agent: work that must run on the compute node that holds a VM's disks (reading its
snapshots). ``export.py``: a disk snapshot, gzip-compressed, into the image store."""

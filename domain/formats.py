"""Which image file contents are refused (reliability plan S11).

Danube Cloud's images are raw: a zvol image is a raw disk, a zone image a ZFS send stream. A file
that is really a *container* format can point outside itself when a hypervisor or ``qemu-img``
opens it: a qcow2 ``backing_file`` or ``data_file`` (CVE-2024-32498), a VMDK descriptor whose
extent is ``/etc/hosts`` (CVE-2022-47951), a raw disk whose first bytes are the QCOW magic and
so is probed as qcow2 (CVE-2026-24708). None of them is a valid image here, so any of them is
refused by its signature, whatever the manifest claims, before it can become an image: imagesvc
never runs ``qemu-img`` at all, and the nodes that later write these files to disks must not be
handed a file that would make them.

``Inspector`` looks at the first ``HEAD_BYTES`` of the *decompressed* content (an image file may
be gzip, bzip2 or xz compressed: ``files[0].compression``), fed chunk by chunk as it streams.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

#: How much of the content is inspected: enough for every signature below (the ISO 9660 volume
#: descriptor sits at 32 KiB).
HEAD_BYTES = 64 * 1024

#: (what, offset, signature) of the container formats that are refused.
_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("qcow", 0, b"QFI\xfb"),                       # qcow / qcow2 (backing_file, data_file)
    ("qed", 0, b"QED\x00"),                        # QEMU enhanced disk (backing file)
    ("vmdk", 0, b"KDMV"),                          # VMDK sparse extent
    ("vmdk", 0, b"# Disk DescriptorFile"),         # VMDK text descriptor (extents are paths)
    ("vmdk", 0, b"COWD"),                          # ESX sparse
    ("vhdx", 0, b"vhdxfile"),                      # VHDX
    ("vhd", 0, b"conectix"),                       # VHD (dynamic: parent locators)
    ("vdi", 64, b"\x7f\x10\xda\xbe"),              # VirtualBox VDI (signature after the text banner)
    ("luks", 0, b"LUKS\xba\xbe"),                  # an encrypted container
)
#: An ISO 9660 volume descriptor ("CD001" at 32 KiB + 1) on a file that also has a partition
#: table is a GPT/ISO polyglot: refused as an ISO (images are disks or datasets, not media).
_ISO = (0x8001, b"CD001")


def unsafe_format(head: bytes) -> str | None:
    """The refused format ``head`` (the content's first bytes) starts with, or None."""
    for what, offset, signature in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return what
    offset, signature = _ISO
    if head[offset:offset + len(signature)] == signature:
        return "iso"
    return None


class Inspector:
    """Collects the head of the decompressed content from the chunks of the file as stored.

    ``feed(chunk)`` until ``done``; then ``verdict()`` is the refused format or None. A head that
    cannot be decompressed is not this module's business (the checksum decides what is stored);
    it is inspected as it is.
    """

    def __init__(self, compression: str | None):
        kind = (compression or "none").lower()
        self._kind = kind
        if kind == "gzip":
            self._decompressor = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif kind == "bzip2":
            self._decompressor = bz2.BZ2Decompressor()
        elif kind == "xz":
            self._decompressor = lzma.LZMADecompressor()
        else:
            self._decompressor = None
        self._head = bytearray()
        self._raw = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        self._raw += chunk[:HEAD_BYTES]
        if self._decompressor is None:
            self._head += chunk[:HEAD_BYTES - len(self._head)]
        else:
            try:
                wanted = HEAD_BYTES - len(self._head)
                if self._kind == "gzip":
                    self._head += self._decompressor.decompress(chunk, wanted)
                else:
                    self._head += self._decompressor.decompress(chunk, max_length=wanted)
            except (zlib.error, OSError, EOFError, lzma.LZMAError):
                self._decompressor = None
                self._head = bytearray(self._raw[:HEAD_BYTES])
        if len(self._head) >= HEAD_BYTES or len(self._raw) >= HEAD_BYTES and self._decompressor is None:
            self.done = True

    def verdict(self) -> str | None:
        return unsafe_format(bytes(self._head))

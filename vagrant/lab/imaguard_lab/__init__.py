"""The imaguard VM lab: a Debian 12 guest with Debian's IMA kernel, booted under QEMU with swtpm.

Host-side only (it never touches the host's IMA, keyrings or securityfs): ``recipe`` names what
goes into the image, ``build`` makes and caches it, ``workdisk`` carries the project tree in and
the results out, ``runner`` boots one scenario, ``cli`` is the ``vagrant/lab/lab`` command.
"""

from __future__ import annotations

__all__: list[str] = []

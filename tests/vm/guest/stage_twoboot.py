"""The smallest multi-boot run: boot 1 in init mode leaves a mark on the root disk and asks for a
systemd boot; boot 2 (PID 1 = systemd, the step in imaguard-lab.service) finds the mark and says how
far systemd got. Proves the runner keeps the overlay and the work disk across boots and that
systemd mode reaches multi-user. Usage: ``python3 stage_twoboot.py /lab/params.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from guestlib import close_results, open_results
from stage_lib import boot_number, brecord, request_reboot, system_state

MARK = Path("/var/lib/imaguard-lab-mark")


def main() -> int:
    open_results()
    try:
        n = boot_number()
        pid1 = Path("/proc/1/comm").read_text().strip()
        if n == 1:
            MARK.write_text("written in boot 1\n")
            brecord("boot", pid1=pid1, mark=None)
            request_reboot("systemd", ["ima_appraise=enforce", "ima_template=ima-sig", "ima_hash=sha256"])
        else:
            mark = MARK.read_text() if MARK.exists() else None
            brecord("boot", mark=mark, **system_state())
    finally:
        close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 6 acceptance: the gate prevents a lockout, and a policy with a bad rule in the middle.

One init-mode boot of the enrolled image (no policy loaded by anyone, ``ima_appraise=enforce``):

1. ``keys load`` the enrollment certificate; sign the lab's own programs with the local key (what
   the stage cycle's gate lists on this image), so that the one gap below is the only one;
2. remove ``security.ima`` from one package binary (``/usr/bin/yes``) and run
   ``policy apply --stage enforce``: it must refuse (exit 3), name that file, and leave the policy
   file in securityfs as it was;
3. ``policy apply --file`` a policy whose line 3 has a typo: imaguard's parser reports that line
   and nothing reaches the kernel;
4. a policy whose middle rule the *kernel* rejects (``obj_type=``: the parser cannot know that the
   running LSM, AppArmor, refuses it) loaded through imaguard: the rejected rule is reported with its
   line and errno. What the kernel kept: is the policy file still there, and is the rule *before*
   the bad one in force (is a program owned by uid 4243 measured)?
5. a good policy (measure programs owned by uid 4245) loads in the same boot: the proof that the
   gate and the rejected load wrote nothing that counts.

Facts only, judged on the host (tests/vm/stage_expectations.py). Params: ``key``, ``cert``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from guestlib import ART, close_results, open_results, read_kmsg
from stage_cycle import cli, run_fact, xattr_hex
from stage_lib import brecord

from imaguard.ima import securityfs

POLICY_FILE = Path("/sys/kernel/security/ima/policy")
UNSIGNED = "/usr/bin/yes"  # coreutils; nothing in the boot path runs it
WORK = Path("/opt/imaguard-gate")
TYPO = (
    "# a typo on line 3\n"
    "measure func=BPRM_CHECK fowner=4243\n"
    "measure func=BPRM_CHEK fowner=4244\n"
    "measure func=BPRM_CHECK fowner=4245\n"
)
KERNEL_BAD = (
    "# line 3 is valid grammar; AppArmor has no obj_type, so the kernel refuses it\n"
    "measure func=BPRM_CHECK fowner=4243\n"
    "measure func=BPRM_CHECK obj_type=imaguard_lab_t\n"
    "measure func=BPRM_CHECK fowner=4244\n"
)
GOOD = "measure func=BPRM_CHECK fowner=4245\n"


def measured(path: Path) -> bool:
    text = Path("/sys/kernel/security/ima/ascii_runtime_measurements").read_text()
    # PCR template-digest template file-digest path [signature]
    return any(line.split()[4:5] == [str(path)] for line in text.splitlines())


def owned_copies() -> dict[int, Path]:
    WORK.mkdir(exist_ok=True)
    copies = {}
    for uid in (4243, 4244, 4245):
        copy = WORK / f"echo-{uid}"
        shutil.copy2("/usr/bin/echo", copy)  # keeps the enrollment signature: nothing here appraises
        os.chown(copy, uid, uid)
        copies[uid] = copy
    return copies


def exec_and_measured(copies: dict[int, Path], name: str) -> None:
    facts = {}
    for uid, copy in copies.items():
        run = run_fact((str(copy), "x"))
        facts[str(uid)] = {"rc": run.get("rc"), "errno": run.get("errno"), "measured": measured(copy)}
    brecord(name, policy_file_present=POLICY_FILE.exists(), copies=facts)


def main() -> int:
    params = json.loads(Path(sys.argv[1]).read_text())
    open_results()
    try:
        brecord("mount-securityfs", mounted_now=securityfs.ensure_mounted(), policy_file_present=POLICY_FILE.exists())
        brecord("keys-load", **cli("keys", "load", params["cert"]))
        # The unsigned executables the stage cycle's gate lists on this image (asserted there; one
        # gate costs 2-3 min): the lab's own programs, which no package ships, signed as there.
        ours = sorted(str(p) for p in Path("/usr/local/lib/imaguard-lab").iterdir() if p.stat().st_mode & 0o111)
        brecord("sign-local", files=ours, **cli("sign", "--key", params["key"], "--cert", params["cert"], *ours))
        saved = os.getxattr(UNSIGNED, "security.ima")
        os.removexattr(UNSIGNED, "security.ima")
        brecord("unsigned", path=UNSIGNED, xattr=xattr_hex(UNSIGNED))
        gate = cli("policy", "apply", "--stage", "enforce", "--template", "appraise-exec", "--cert", params["cert"])
        brecord("gate-apply-enforce", policy_file_present=POLICY_FILE.exists(), **gate)
        os.setxattr(UNSIGNED, "security.ima", saved)
        copies = owned_copies()
        Path("/tmp/typo.policy").write_text(TYPO)
        typo = cli("policy", "apply", "--stage", "measure", "--file", "/tmp/typo.policy")
        brecord("typo-apply", policy_file_present=POLICY_FILE.exists(), **typo)
        Path("/tmp/kernel-bad.policy").write_text(KERNEL_BAD)
        bad = cli("policy", "apply", "--stage", "measure", "--file", "/tmp/kernel-bad.policy")
        brecord("kernel-bad-apply", policy_file_present=POLICY_FILE.exists(), **bad)
        exec_and_measured(copies, "after-kernel-bad")
        Path("/tmp/good.policy").write_text(GOOD)
        good = cli("policy", "apply", "--stage", "measure", "--file", "/tmp/good.policy")
        brecord("good-apply", policy_file_present=POLICY_FILE.exists(), **good)
        exec_and_measured(copies, "after-good")
        lines = read_kmsg()
        (ART / "kmsg.txt").write_text("\n".join(lines) + "\n")
        wanted = ("type=1800", "type=1807", "type=1802", "ima:", "integrity:")
        brecord("kernel", lines=[ln for ln in lines if any(w in ln for w in wanted)][-300:])
        subprocess.run(["sync"], check=False)
    finally:
        close_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())

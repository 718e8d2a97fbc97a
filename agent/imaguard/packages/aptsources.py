"""apt's ``sources.list`` (one-line) and ``*.sources`` (deb822) files, parsed into repositories (pure).

Only what the deb chain needs: which ``deb`` repositories are configured, and which keys apt trusts
for each (``Signed-By``: keyring files, fingerprints or an inline key block; sources.list(5)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imaguard.errors import FormatError
from imaguard.packages.debchain import parse_stanza

__all__ = ["Repository", "SignedBy", "parse_deb822_sources", "parse_one_line_sources"]


@dataclass(frozen=True, slots=True)
class SignedBy:
    """The keys apt accepts for a repository. All empty: apt's default trusted keyrings."""

    keyrings: tuple[str, ...] = ()  # absolute paths of keyring files
    fingerprints: frozenset[str] = frozenset()  # only signatures by these keys count
    inline: bytes = b""  # an armored key block written into the .sources file itself


@dataclass(frozen=True, slots=True)
class Repository:
    """One ``deb`` URI + suite with its components; ``flat``: suite is a path ending in ``/``."""

    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: SignedBy
    trusted_yes: bool  # [trusted=yes]: apt skips verification; imaguard never does
    origin_file: str

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    @property
    def dist_uri(self) -> str:
        """URI of the directory holding InRelease (apt: ``URI/dists/SUITE/`` or ``URI/SUITE``)."""
        base = self.uri if self.uri.endswith("/") else self.uri + "/"
        if self.flat:
            return base if self.suite == "./" else base + self.suite
        return f"{base}dists/{self.suite}/"


_FPR = re.compile(r"^[0-9A-Fa-f]{16,40}!?$")


def _signed_by(value: str, where: str) -> SignedBy:
    if "BEGIN PGP PUBLIC KEY BLOCK" in value:
        # deb822 folds the block; a lone "." stands for an empty line.
        lines = [ln.strip() for ln in value.split("\n")]
        text = "\n".join("" if ln == "." else ln for ln in lines) + "\n"
        return SignedBy(inline=text.encode("ascii", "replace"))
    paths: list[str] = []
    fprs: set[str] = set()
    for item in re.split(r"[,\s]+", value.strip()):
        if not item:
            continue
        if item.startswith("/"):
            paths.append(item)
        elif _FPR.match(item):
            fprs.add(item.upper())  # a trailing "!" stays: that key itself, not any subkey of it
        else:
            raise FormatError(f"{where}: Signed-By {item!r} is neither an absolute path nor a fingerprint")
    return SignedBy(tuple(paths), frozenset(fprs))


def _options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split():
        k, sep, v = item.partition("=")
        if sep:
            out[k.rstrip("+-").lower()] = v
    return out


def parse_one_line_sources(data: bytes, *, name: str) -> list[Repository]:
    """``deb [opt=val ...] URI SUITE [COMPONENT...]`` lines; ``deb-src`` and comments ignored."""
    repos = []
    for lineno, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{name}:{lineno}"
        kind, _, rest = line.partition(" ")
        if kind == "deb-src":
            continue
        if kind != "deb":
            raise FormatError(f"{where}: unknown type {kind!r}")
        opts: dict[str, str] = {}
        rest = rest.strip()
        if rest.startswith("["):
            inner, sep, rest = rest[1:].partition("]")
            if not sep:
                raise FormatError(f"{where}: unterminated [options]")
            opts = _options(inner)
        words = rest.split()
        if len(words) < 2:
            raise FormatError(f"{where}: need URI and suite")
        repos.append(
            Repository(
                words[0],
                words[1],
                tuple(words[2:]),
                _signed_by(opts.get("signed-by", ""), where),
                opts.get("trusted", "").lower() in ("yes", "true"),
                name,
            )
        )
    return repos


def parse_deb822_sources(data: bytes, *, name: str) -> list[Repository]:
    """The deb822 ``.sources`` format: one stanza per group of URIs by Suites."""
    repos = []
    for block in re.split(rb"\n[ \t]*\n", data):
        lines = [ln for ln in block.split(b"\n") if not ln.lstrip().startswith(b"#")]
        fields = parse_stanza(b"\n".join(lines), name=name)
        if not fields:
            continue

        def get(key: str, fields: dict[str, bytes] = fields) -> str:
            for k, v in fields.items():
                if k.lower() == key:
                    return v.decode("utf-8", "replace")
            return ""

        if get("enabled").strip().lower() in ("no", "false"):
            continue
        if "deb" not in get("types").split():
            continue
        signed = _signed_by(get("signed-by"), name)
        trusted_yes = get("trusted").strip().lower() in ("yes", "true")
        for uri in get("uris").split():
            for suite in get("suites").split():
                repos.append(Repository(uri, suite, tuple(get("components").split()), signed, trusted_yes, name))
    return repos

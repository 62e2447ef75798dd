"""Which attachments mailrelay refuses to send: programs, judged by extension and type.

A refused attachment is worse for the sending mailbox than a refused request: Gmail and
Microsoft 365 reject or quarantine such mail, and a mailbox that sends it looks
compromised. The check is by name and declared type only; content is not inspected.

Archives (zip, 7z, rar) are not blocked. mailrelay does not open them, so it cannot tell a
zipped report from a zipped program, and refusing every archive would refuse ordinary
mail; the providers scan archives themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BLOCKED_CONTENT_TYPES",
    "DEFAULT_BLOCKED_EXTENSIONS",
    "AttachmentPolicy",
    "parse_list",
]

# Gmail's published list of blocked file types ("File types blocked in Gmail", Google
# Workspace help), plus the Windows types that also run on a double click and that
# Outlook blocks: gadget, inf, psm1, reg, scf. Lowercase, without the dot.
DEFAULT_BLOCKED_EXTENSIONS: frozenset[str] = frozenset({
    "ade", "adp", "apk", "appx", "appxbundle", "bat", "cab", "chm", "cmd", "com", "cpl",
    "diagcab", "diagcfg", "diagpack", "dll", "dmg", "ex", "exe", "hta", "img", "ins", "iso",
    "isp", "jar", "jnlp", "js", "jse", "lib", "lnk", "mde", "msc", "msi", "msix",
    "msixbundle", "msp", "mst", "nsh", "pif", "ps1", "scr", "sct", "shb", "sys", "vb", "vbe",
    "vbs", "vhd", "vxd", "wsc", "wsf", "wsh", "xll",
    "gadget", "inf", "psm1", "reg", "scf",
})

# The types those files are sent as, so that a program renamed "report" is refused too.
# Shell scripts (application/x-sh) are left out, like ".sh" above: no mail client runs
# them on a click, and they are mailed as text in ordinary work.
DEFAULT_BLOCKED_CONTENT_TYPES: frozenset[str] = frozenset({
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-ms-dos-executable",
    "application/x-dosexec",
    "application/vnd.microsoft.portable-executable",
    "application/x-ms-installer",
    "application/x-msi",
    "application/x-ms-shortcut",
    "application/vnd.ms-cab-compressed",
    "application/vnd.ms-htmlhelp",
    "application/x-chm",
    "application/hta",
    "application/x-bat",
    "application/java-archive",
    "application/x-java-archive",
    "application/x-java-jnlp-file",
    "application/vnd.android.package-archive",
    "application/x-apple-diskimage",
    "application/x-iso9660-image",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/vbscript",
})

_LIST_SEPARATOR = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class AttachmentPolicy:
    """Blocked extensions (without the dot) and content types (without parameters).

    Both sets are compared lowercase; they are normalized the way ``parse_list`` does.
    """

    blocked_extensions: frozenset[str] = DEFAULT_BLOCKED_EXTENSIONS
    blocked_content_types: frozenset[str] = DEFAULT_BLOCKED_CONTENT_TYPES

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocked_extensions", _normalized(self.blocked_extensions))
        object.__setattr__(self, "blocked_content_types", _normalized(self.blocked_content_types))

    def refusal(self, filename: str, content_type: str) -> str | None:
        """Why the attachment is refused, in plain words, or ``None`` when it may be sent."""
        for extension in _extensions(filename):
            if extension in self.blocked_extensions:
                return f"attachment {filename!r} has a blocked extension (.{extension})"
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type in self.blocked_content_types:
            return f"attachment {filename!r} has a blocked content type ({media_type})"
        return None


def parse_list(value: str) -> frozenset[str]:
    """A setting's list: comma or space separated, lowercased, leading dots dropped."""
    words = (word.lower().lstrip(".") for word in _LIST_SEPARATOR.split(value))
    return frozenset(word for word in words if word)


def _normalized(values: frozenset[str]) -> frozenset[str]:
    words = (value.strip().lower().lstrip(".") for value in values)
    return frozenset(word for word in words if word)  # "" would match a missing type


def _extensions(filename: str) -> list[str]:
    """The extension a saved file would have, lowercase; none for a name without one.

    A name with a NUL also yields the extension before it: a client written in C may end
    the name there ("evil.exe\\0.pdf").
    """
    names = [filename]
    if "\x00" in filename:
        names.append(filename.split("\x00", 1)[0])
    extensions = []
    for name in names:
        base = _without_ignored_end(name).replace("\\", "/").rsplit("/", 1)[-1]
        _, dot, extension = base.rpartition(".")
        if dot and extension:
            extensions.append(extension.lower())
    return extensions


def _without_ignored_end(name: str) -> str:
    # Windows drops trailing dots and spaces from a name ("evil.exe. " is evil.exe); other
    # whitespace and NULs are what a mail client may strip when it saves the file.
    end = len(name)
    while end and (name[end - 1].isspace() or name[end - 1] in ".\x00"):
        end -= 1
    return name[:end]

"""AttachmentPolicy: programs are refused by extension or declared type, documents pass."""

from __future__ import annotations

import pytest

from mailrelay.content.attachment_policy import (
    DEFAULT_BLOCKED_CONTENT_TYPES,
    DEFAULT_BLOCKED_EXTENSIONS,
    AttachmentPolicy,
    parse_list,
)

POLICY = AttachmentPolicy()


@pytest.mark.parametrize(("filename", "content_type"), [
    ("report.pdf", "application/pdf"),
    ("photo.PNG", "image/png"),
    ("contract.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("export.csv", "text/csv; charset=utf-8"),
    ("meeting.ics", "text/calendar; method=REQUEST"),
    ("archive.zip", "application/zip"),
    ("README", "text/plain"),
    ("notes.txt", "application/octet-stream"),
    ("setup.sh", "application/x-sh"),
    ("exe", "application/pdf"),  # a name that is an extension is not one
])
def test_ordinary_files_pass(filename: str, content_type: str) -> None:
    assert POLICY.refusal(filename, content_type) is None


@pytest.mark.parametrize(("filename", "extension"), [
    ("setup.exe", "exe"),
    ("invoice.pdf.exe", "exe"),
    ("INVOICE.EXE", "exe"),
    ("Invoice.ExE", "exe"),
    ("evil.exe.", "exe"),
    ("evil.exe ", "exe"),
    ("evil.exe. . ", "exe"),
    ("evil.exe\t\n", "exe"),
    ("evil.exe\x00", "exe"),
    ("evil.exe\x00.pdf", "exe"),
    ("C:\\Users\\x\\evil.scr", "scr"),
    ("folder/run.bat", "bat"),
    (".exe", "exe"),
    ("photo\u202egpj.exe", "exe"),
    ("script.ps1", "ps1"),
    ("module.psm1", "psm1"),
    ("app.jar", "jar"),
    ("disk.iso", "iso"),
    ("shortcut.lnk", "lnk"),
    ("page.hta", "hta"),
    ("tweak.reg", "reg"),
])
def test_blocked_extensions_are_refused(filename: str, extension: str) -> None:
    assert POLICY.refusal(filename, "application/octet-stream") == (
        f"attachment {filename!r} has a blocked extension (.{extension})")


@pytest.mark.parametrize("content_type", [
    "application/x-msdownload",
    "APPLICATION/X-MSDOWNLOAD",
    "application/x-msdownload; name=report",
    " application/x-msdownload ;name=x",
    "application/vnd.microsoft.portable-executable",
    "application/java-archive",
    "application/hta",
])
def test_blocked_content_types_are_refused_whatever_the_name(content_type: str) -> None:
    media_type = content_type.split(";")[0].strip().lower()

    assert POLICY.refusal("report", content_type) == (
        f"attachment 'report' has a blocked content type ({media_type})")
    assert POLICY.refusal("report.pdf", content_type) is not None


def test_the_extension_is_named_before_the_type() -> None:
    assert POLICY.refusal("a.exe", "application/x-msdownload") == (
        "attachment 'a.exe' has a blocked extension (.exe)")


def test_defaults_follow_gmail_and_are_normalized() -> None:
    assert {"exe", "bat", "cmd", "com", "js", "vbs", "msi", "scr", "jar", "lnk", "ps1", "iso",
            "img", "dll", "hta"} <= DEFAULT_BLOCKED_EXTENSIONS
    assert not {"zip", "pdf", "sh", "docm"} & DEFAULT_BLOCKED_EXTENSIONS
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in DEFAULT_BLOCKED_EXTENSIONS)
    assert all(ct == ct.lower() and "/" in ct and ";" not in ct for ct in DEFAULT_BLOCKED_CONTENT_TYPES)
    assert "application/zip" not in DEFAULT_BLOCKED_CONTENT_TYPES


def test_a_policy_can_block_other_things() -> None:
    policy = AttachmentPolicy(frozenset({".PDF", "docm"}), frozenset({"Application/ZIP"}))

    assert policy.blocked_extensions == {"pdf", "docm"}
    assert policy.refusal("a.pdf", "application/pdf") == "attachment 'a.pdf' has a blocked extension (.pdf)"
    assert policy.refusal("a", "application/zip") == (
        "attachment 'a' has a blocked content type (application/zip)")
    assert policy.refusal("a.exe", "application/x-msdownload") is None


def test_empty_entries_block_nothing() -> None:
    policy = AttachmentPolicy(frozenset({"", " ", "exe"}), frozenset({"", "application/x-msdownload"}))

    assert policy.blocked_extensions == {"exe"}
    assert policy.refusal("a.", "") is None


def test_an_empty_policy_refuses_nothing() -> None:
    assert AttachmentPolicy(frozenset(), frozenset()).refusal("a.exe", "application/x-msdownload") is None


@pytest.mark.parametrize(("value", "expected"), [
    ("exe, .BAT  cmd,,", {"exe", "bat", "cmd"}),
    ("application/x-msdownload,Application/Java-Archive", {"application/x-msdownload",
                                                           "application/java-archive"}),
    ("", set()),
    (" , ", set()),
    ("..exe", {"exe"}),
])
def test_parse_list(value: str, expected: set[str]) -> None:
    assert parse_list(value) == expected

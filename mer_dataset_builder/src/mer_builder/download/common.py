"""Resumable, verified downloads and safe archive extraction (shared by the per-corpus modules).

`fetch` streams a URL into `<file>.part`, resumes an interrupted transfer with an HTTP Range request, and
renames the part to its final name only once the transfer is complete and its checksum is right; an archive
without a published checksum must at least open as a zip or tar, and one found broken (after the transfer, or
when its extraction fails) is deleted so that a rerun downloads it again instead of failing on it forever.
`safe_extract` unpacks a zip or tar(.gz/.bz2/.xz) into a hidden staging folder next to the target,
refusing members that would land outside it and links or devices, and renames the staging folder to the
target only when every member was extracted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("mer_builder.download")

CHUNK = 1 << 20
USER_AGENT = "mer-dataset-builder/0.1 (+https://github.com/; research corpus download)"
MARKER = ".mer_download.json"


class DownloadError(Exception):
    """A download or extraction failed; the message is one line naming the file or URL."""


class ManualDownload(DownloadError):
    """The corpus cannot be fetched by URL here; the message says how to get it and where to put it."""


class CorruptArchive(DownloadError):
    """An archive that is not a zip or tar, or that breaks off or is damaged while it is read."""


class GatedCorpus(ManualDownload):
    """A licence-gated corpus (IEMOCAP, MEAD, ESD): the message holds the exact instructions."""


@dataclass(frozen=True)
class Archive:
    """One file of a corpus distribution.

    `subdir` is where its contents go below the corpus folder (None: the corpus folder itself);
    `strip_single_root` drops a single top-level folder (`MELD.Raw/...`). `extract=False` keeps the file
    as is (a transcript list).
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    subdir: str | None = None
    strip_single_root: bool = False
    extract: bool = True


# ----------------------------------------------------------------------------------------------- fetch
def _digests(path: Path) -> tuple[Any, Any]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    if path.exists():
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                sha.update(block)
                md5.update(block)
    return sha, md5


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file."""
    return _digests(Path(path))[0].hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse `bytes START-END/TOTAL` or `bytes */TOTAL` into (start, total)."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


class _Retry(Exception):
    """A transient failure: the caller may try again (resuming from the part file)."""


def _transfer(url: str, part: Path, name: str, progress: bool, timeout: float) -> None:
    """One attempt: append to `part` from where it stops; raise _Retry on a transient failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            _, total = _content_range(exc.headers.get("Content-Range"))
            exc.close()
            if total == offset:  # the part file already holds the whole file
                return
            part.unlink()
            raise _Retry(f"server refused to resume {name} at byte {offset}; restarting") from exc
        exc.close()
        if exc.code in (408, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason} for {url}") from exc
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retry(f"cannot reach {url}: {reason}") from exc

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers have no status
        if offset and status == 206:
            start, _ = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Retry(f"server resumed {name} at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:  # 200: the server ignored the Range header (or there was none): start over cleanly
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = offset + expected if expected is not None else None
        received = 0
        with (
            open(part, mode) as out,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not progress, leave=False,
            ) as bar,
        ):
            try:
                while block := resp.read(CHUNK):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(f"transfer of {name} interrupted after {offset + received} bytes: {exc}") from exc
        if expected is not None and received < expected:
            raise _Retry(f"transfer of {name} interrupted after {offset + received} of {total} bytes")


def fetch(
    url: str,
    dest_file: Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    md5: str | None = None,
    archive: bool = False,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
) -> str:
    """Download `url` to `dest_file`, resuming from `dest_file.part`; verify and return its sha256.

    An existing `dest_file` is reused when it matches the checksum (or when none is given). A transient
    failure (dropped connection, short read, 5xx) is retried `retries` times, each resuming with a Range
    request; a server answering 200 instead of 206 restarts the part cleanly. On a checksum mismatch the
    part is deleted and DownloadError names the file, the expected and the actual digest. Without a
    known checksum the sha256 seen is logged and written next to the file as `<file>.sha256`, and with
    `archive` the file must at least open as a zip or tar (`archive_problem`): a bad transfer is deleted
    with a DownloadError that says to rerun, and a bad file left by an earlier run is fetched again.
    """
    dest_file = Path(dest_file)
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    part = dest_file.with_name(dest_file.name + ".part")
    name = dest_file.name
    unverified_archive = archive and not (sha256 or md5)

    if dest_file.exists() and unverified_archive and (problem := archive_problem(dest_file)):
        log.warning("%s; deleting it and downloading again", problem)
        discard_download(dest_file)
    if dest_file.exists():
        sha, md = _digests(dest_file)
        _verify(dest_file, sha.hexdigest(), md.hexdigest(), sha256, md5, existing=True)
        _record(dest_file, sha.hexdigest(), verified=bool(sha256 or md5))
        return sha.hexdigest()

    attempt = 0
    while True:
        try:
            _transfer(url, part, name, progress, timeout)
            break
        except _Retry as exc:
            if attempt >= retries:
                kept = f"; rerun to resume from {part}" if part.exists() else ""
                raise DownloadError(f"{exc} (gave up after {attempt + 1} attempts){kept}") from None
            attempt += 1
            log.warning("%s; retrying (%d/%d)", exc, attempt, retries)
            time.sleep(retry_wait * attempt)

    sha, md = _digests(part)
    try:
        _verify(dest_file, sha.hexdigest(), md.hexdigest(), sha256, md5, existing=False)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    if unverified_archive and (problem := archive_problem(part)):
        part.unlink(missing_ok=True)
        raise DownloadError(f"the download from {url} is broken: {problem}; it was deleted, rerun to download it "
                            "again (or give --url another mirror)")
    os.replace(part, dest_file)
    _record(dest_file, sha.hexdigest(), verified=bool(sha256 or md5))
    return sha.hexdigest()


def _verify(path: Path, sha_seen: str, md5_seen: str, sha256: str | None, md5: str | None, existing: bool) -> None:
    checks = [("sha256", sha256, sha_seen), ("md5", md5, md5_seen)]
    for algo, want, seen in checks:
        if want and want.lower() != seen:
            hint = "; delete it to download again" if existing else "; the download was deleted"
            raise DownloadError(f"checksum mismatch for {path}: expected {algo} {want.lower()}, got {seen}{hint}")


def discard_download(path: Path) -> None:
    """Delete a downloaded file and its `.sha256` record."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def _record(path: Path, sha: str, verified: bool) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    if not verified:
        log.warning("could not verify %s (no published checksum); sha256 seen: %s (recorded in %s)",
                    path.name, sha, sidecar.name)
    _atomic_write(sidecar, f"{sha}  {path.name}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- extract
def _member_path(archive: Path, name: str) -> Path:
    """The relative path of a member, or DownloadError when it is absolute or climbs out with `..`."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise DownloadError(f"refusing to extract {archive.name}: member {name!r} has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"refusing to extract {archive.name}: member {name!r} points outside the target")
    return Path(*parts) if parts else Path()


def _inside(root: Path, rel: Path, archive: Path, name: str) -> Path:
    dest = (root / rel).resolve()
    if dest != root and root not in dest.parents:
        raise DownloadError(f"refusing to extract {archive.name}: member {name!r} points outside the target")
    return dest


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "a device or special file"
    return None


def _tar_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hardlink"
    if member.isreg() or member.isdir():
        return None
    return "a device or special file"


def _extract_zip(archive: Path, root: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if not i.filename.replace("\\", "/").startswith("__MACOSX/")]
        planned = []
        for info in infos:  # check every member before writing anything
            kind = _zip_kind(info)
            if kind:
                raise DownloadError(f"refusing to extract {archive.name}: member {info.filename!r} is {kind}")
            rel = _member_path(archive, info.filename)
            planned.append((info, _inside(root, rel, archive, info.filename)))
        for info, dest in tqdm(planned, desc=f"extract {archive.name}", unit="file", disable=not progress,
                               leave=False):
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)


def _extract_tar(archive: Path, root: Path, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tf, tqdm(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False) as bar:
        for member in tf:  # one sequential pass; a bad member aborts and the staging folder is removed
            kind = _tar_kind(member)
            if kind:
                raise DownloadError(f"refusing to extract {archive.name}: member {member.name!r} is {kind}")
            rel = _member_path(archive, member.name)
            dest = _inside(root, rel, archive, member.name)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(member)
                if src is None:
                    raise DownloadError(f"cannot read member {member.name!r} of {archive}")
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            bar.update(1)


def _staging_dir(parent: Path, name: str) -> Path:
    """A new hidden folder `parent/.<name>.partial-<unique>` with ordinary (umask) permissions."""
    path = Path(parent) / f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path.resolve()


# what a damaged or truncated archive raises while it is read (a short .gz: EOFError; a bad deflate block: zlib.error)
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _extractor(archive: Path) -> Callable[[Path, Path, bool], None]:
    """The extractor for a zip or a tar(.gz/.bz2/.xz); CorruptArchive when the file is neither or is unreadable."""
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip
        if tarfile.is_tarfile(archive):  # reads the first block: a truncated .gz raises EOFError here
            return _extract_tar
    except _READ_ERRORS as exc:
        raise CorruptArchive(f"{archive} is not a readable zip or tar archive ({_one_line(exc)})") from None
    raise CorruptArchive(f"{archive} is not a zip or tar archive")


def archive_problem(archive: Path) -> str | None:
    """Why `archive` cannot be extracted, found cheaply (the zip's central directory, the tar's first member),
    or None. A fault deeper in a tar stream shows only when it is extracted."""
    try:
        extractor = _extractor(Path(archive))
        if extractor is _extract_zip:
            with zipfile.ZipFile(archive) as zf:
                zf.infolist()
        else:
            with tarfile.open(archive, "r:*") as tf:
                tf.next()
    except CorruptArchive as exc:
        return str(exc)
    except _READ_ERRORS as exc:
        return f"{archive} is not a readable zip or tar archive ({_one_line(exc)})"
    return None


def safe_extract(archive: Path, target: Path, *, strip_single_root: bool = False, progress: bool = False) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) archive into `target` (which must not exist yet); return `target`.

    Members with an absolute path, a `..` component, or that are symlinks, hardlinks or devices are refused
    with a one-line DownloadError naming the member. Extraction goes to a hidden staging folder beside
    `target` that is renamed to `target` only after every member was written: a failed extraction leaves
    nothing under the final name. With `strip_single_root`, an archive whose members all sit in one folder
    (`MELD.Raw/...`) yields that folder's contents.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DownloadError(f"archive not found: {archive}")
    if target.exists():
        raise DownloadError(f"cannot extract {archive.name}: {target} already exists")
    extractor = _extractor(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(target.parent, target.name)
    try:
        try:
            extractor(archive, staging, progress)
        except _READ_ERRORS as exc:
            raise CorruptArchive(f"cannot extract {archive}: {_one_line(exc)}") from exc
        result = staging
        entries = list(staging.iterdir())
        if strip_single_root and len(entries) == 1 and entries[0].is_dir():
            result = entries[0]
        os.replace(result, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------- corpus install
def clean_stale(dest: Path, folder: str) -> None:
    """Remove staging folders that an interrupted earlier run left for `folder` in `dest`."""
    for stale in Path(dest).glob(f".{folder}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def install_archives(
    folder: str,
    dest: Path,
    archives: Sequence[Archive],
    *,
    progress: bool = True,
    post: Callable[[Path], None] | None = None,
) -> Path:
    """Fetch `archives` into `dest/downloads/` and assemble them into `dest/<folder>` atomically.

    The corpus is built in a hidden staging folder, checked by `post` (which may raise DownloadError),
    stamped with `.mer_download.json` (URLs, digests, whether verified) and renamed to its final name.
    A folder that already exists is returned untouched.
    """
    dest = Path(dest)
    target = dest / folder
    if target.is_dir() and any(target.iterdir()):
        state = "complete download" if (target / MARKER).exists() else "existing folder, not downloaded here"
        log.info("%s already present at %s (%s); nothing to do", folder, target, state)
        return target
    if target.is_dir():
        target.rmdir()  # an empty folder: fill it
    elif target.exists():
        raise DownloadError(f"{target} is a file, expected the {folder} corpus folder")
    downloads = dest / "downloads"
    clean_stale(dest, folder)
    fetched = []
    for arc in archives:
        path = downloads / arc.filename
        seen = fetch(arc.url, path, arc.sha256, progress, md5=arc.md5, archive=arc.extract)
        fetched.append((arc, path, seen))

    staging = _staging_dir(dest, folder)
    build = staging / folder
    try:
        multi = any(arc.subdir for arc, _, _ in fetched) or not fetched[0][0].extract
        if multi:
            build.mkdir()
        for arc, path, _ in fetched:
            where = build / arc.subdir if arc.subdir else build
            if not arc.extract:
                where.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, where / arc.filename)
            else:
                try:
                    safe_extract(path, where, strip_single_root=arc.strip_single_root, progress=progress)
                except CorruptArchive as exc:
                    if arc.sha256 or arc.md5:  # the published file itself: downloading it again cannot help
                        raise
                    discard_download(path)  # else the next run would find the same broken file
                    raise DownloadError(f"{exc}; deleted {path} (no checksum to verify it): rerun to download it "
                                        "again (or give --url another mirror)") from None
        if post is not None:
            post(build)
        record = {
            "corpus": folder,
            "archives": [
                {"url": arc.url, "file": arc.filename, "sha256": seen,
                 "verified": "sha256" if arc.sha256 else "md5" if arc.md5 else None}
                for arc, _, seen in fetched
            ],
        }
        (build / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(build, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def override(archives: Sequence[Archive], url: str | None, sha256: str | None, corpus: str) -> list[Archive]:
    """Apply a user's `--url`/`--sha256` to a one-archive corpus (a mirror of the official file)."""
    archives = list(archives)
    if url is None and sha256 is None:
        return archives
    main = [a for a in archives if a.extract]
    if len(main) != 1:
        raise DownloadError(f"{corpus} has {len(main)} archives; --url/--sha256 apply to one-archive corpora only")
    first = main[0]
    filename = first.filename
    if url is not None:
        tail = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        filename = tail if re.search(r"\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$", tail) else first.filename
    replaced = Archive(
        url=url or first.url,
        filename=filename,
        sha256=sha256,
        md5=first.md5 if url is None else None,
        subdir=first.subdir,
        strip_single_root=first.strip_single_root,
    )
    return [replaced if a is first else a for a in archives]


def gated_download(
    folder: str,
    dest: Path,
    instructions: Callable[[Path], str],
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return `dest/<folder>` when the user already put the corpus there; with `url` (the user's own
    licensed copy, e.g. a local mirror) fetch and extract it; otherwise raise GatedCorpus."""
    target = Path(dest) / folder
    if url is None:
        if target.is_dir() and any(target.iterdir()):
            return target
        raise GatedCorpus(instructions(dest))
    archive = Archive(url=url, filename=f"{folder}.archive", strip_single_root=True)
    return install_archives(folder, dest, override([archive], url, sha256, folder), progress=progress)

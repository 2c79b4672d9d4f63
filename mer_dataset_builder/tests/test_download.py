"""Downloads against a local HTTP server (Range support, dropped connections), safe extraction, gated corpora."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mer_builder.download import (
    CORPORA,
    DownloadError,
    GatedCorpus,
    ManualDownload,
    corpus_folder,
    download_corpus,
    emovdb,
    fetch,
    safe_extract,
)

# ------------------------------------------------------------------------------------------ the server


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # path -> bytes sent before the connection is dropped (once)
    ignore_range = False
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        type(self).requests.append((path, self.headers.get("Range")))
        body = self.files.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not self.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = self.cut_after.pop(path, None)
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"files": {}, "cut_after": {}, "requests": [], "ignore_range": False})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _payload(n: int = 300_000) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- fetch


def test_interrupted_transfer_resumes_from_part_file(server, tmp_path):
    data = _payload()
    server.files["/big.bin"] = data
    server.cut_after["/big.bin"] = 100_000
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"

    with pytest.raises(DownloadError, match="interrupted after 100000 of 300000 bytes.*rerun to resume"):
        fetch(f"{server.base}/big.bin", dest, sha256=_sha(data), progress=False, retries=0)
    assert not dest.exists()
    assert part.stat().st_size == 100_000

    seen = fetch(f"{server.base}/big.bin", dest, sha256=_sha(data), progress=False, retries=0)
    assert server.requests == [("/big.bin", None), ("/big.bin", "bytes=100000-")]
    assert seen == _sha(data)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == _sha(data)
    assert not part.exists()


def test_dropped_connection_is_retried_with_range(server, tmp_path):
    data = _payload()
    server.files["/big.bin"] = data
    server.cut_after["/big.bin"] = 65_536
    dest = tmp_path / "big.bin"
    fetch(f"{server.base}/big.bin", dest, sha256=_sha(data), progress=False, retries=2, retry_wait=0)
    assert [r[1] for r in server.requests] == [None, "bytes=65536-"]
    assert dest.read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = _payload(50_000)
    server.files["/f.bin"] = data
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"\xff" * 20_000)  # stale bytes that do not match the file
    fetch(f"{server.base}/f.bin", dest, sha256=_sha(data), progress=False)
    assert server.requests == [("/f.bin", "bytes=20000-")]
    assert dest.read_bytes() == data


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    data = _payload(10_000)
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_is_an_error_and_leaves_no_file(server, tmp_path):
    data = _payload(20_000)
    server.files["/f.zip"] = data
    dest = tmp_path / "f.zip"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch(f"{server.base}/f.zip", dest, sha256=wrong, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(dest) in msg and wrong in msg and _sha(data) in msg
    assert not dest.exists() and not (tmp_path / "f.zip.part").exists()


def test_md5_checksum_is_checked(server, tmp_path):
    data = _payload(5_000)
    server.files["/f.bin"] = data
    with pytest.raises(DownloadError, match="expected md5 ffff"):
        fetch(f"{server.base}/f.bin", tmp_path / "f.bin", md5="ffff", progress=False)
    good = hashlib.md5(data).hexdigest()
    fetch(f"{server.base}/f.bin", tmp_path / "f.bin", md5=good, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_unknown_checksum_is_recorded(server, tmp_path, caplog):
    data = _payload(5_000)
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    with caplog.at_level("WARNING", logger="mer_builder.download"):
        seen = fetch(f"{server.base}/f.bin", dest, progress=False)
    assert seen == _sha(data)
    assert "could not verify f.bin" in caplog.text and _sha(data) in caplog.text
    assert (tmp_path / "f.bin.sha256").read_text() == f"{_sha(data)}  f.bin\n"


def test_existing_file_with_wrong_checksum_is_not_reused(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError, match="delete it to download again"):
        fetch(f"{server.base}/f.bin", dest, sha256="1" * 64, progress=False)
    assert server.requests == []


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match=r"^HTTP 404 Not Found for http://127\.0\.0\.1:\d+/missing\.zip$"):
        fetch(f"{server.base}/missing.zip", tmp_path / "m.zip", progress=False)


# ------------------------------------------------------------------------------------- safe_extract


def _zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def _tar(entries: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_zip_slip_is_refused_and_nothing_is_left(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"Actor_01/ok.wav": b"x", "../evil.txt": b"pwned"}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match=r"^refusing to extract a\.zip: member '\.\./evil\.txt' points outside"):
        safe_extract(archive, out / "RAVDESS")
    assert _leftovers(out) == []
    assert not (tmp_path / "evil.txt").exists()


def test_absolute_member_is_refused(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar({"/etc/evil": b"x"}))
    with pytest.raises(DownloadError, match="member '/etc/evil' has an absolute path"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "word"), [(tarfile.SYMTYPE, "a symlink"), (tarfile.LNKTYPE, "a hardlink"), (tarfile.CHRTYPE, "a device")]
)
def test_tar_links_and_devices_are_refused(tmp_path, kind, word):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar({"MELD.Raw/a.csv": b"x"}, links={"MELD.Raw/link": (kind, "/etc/passwd")}))
    with pytest.raises(DownloadError, match=f"member 'MELD.Raw/link' is {word}"):
        safe_extract(archive, tmp_path / "MELD")
    assert _leftovers(tmp_path) == ["a.tar.gz"]


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"a.wav": b"x"}, symlinks={"b.wav": "/etc/passwd"}))
    with pytest.raises(DownloadError, match="member 'b.wav' is a symlink"):
        safe_extract(archive, tmp_path / "out")
    assert _leftovers(tmp_path) == ["a.zip"]


def test_safe_extract_writes_members_and_strips_single_root(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar({"MELD.Raw/train_sent_emo.csv": b"csv", "MELD.Raw/sub/x.bin": b"\x00\x01"}))
    out = safe_extract(archive, tmp_path / "MELD", strip_single_root=True)
    assert (out / "train_sent_emo.csv").read_bytes() == b"csv"
    assert (out / "sub" / "x.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path) == ["MELD", "a.tar.gz"]
    with pytest.raises(DownloadError, match="already exists"):
        safe_extract(archive, tmp_path / "MELD")


def test_not_an_archive_is_one_line_error(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(DownloadError, match=r"x\.zip is not a zip or tar archive$"):
        safe_extract(bad, tmp_path / "out")


# ------------------------------------------------------------------------------------ corpora end-to-end


def test_ravdess_from_mirror_is_extracted_and_stamped(server, tmp_path):
    data = _zip({"Actor_01/03-01-05-01-01-01-01.wav": b"RIFF", "Actor_02/03-01-04-01-02-01-02.wav": b"RIFF"})
    server.files["/mirror/Audio_Speech_Actors_01-24.zip"] = data
    url = f"{server.base}/mirror/Audio_Speech_Actors_01-24.zip"
    root = download_corpus("ravdess", tmp_path, url=url, sha256=_sha(data), progress=False)
    assert root == tmp_path / "RAVDESS"
    assert (root / "Actor_01" / "03-01-05-01-01-01-01.wav").read_bytes() == b"RIFF"
    stamp = json.loads((root / ".mer_download.json").read_text())
    assert stamp["archives"] == [
        {"url": url, "file": "Audio_Speech_Actors_01-24.zip", "sha256": _sha(data), "verified": "sha256"}
    ]
    assert (tmp_path / "downloads" / "Audio_Speech_Actors_01-24.zip").exists()
    n = len(server.requests)
    assert download_corpus("RAVDESS", tmp_path, url=url, progress=False) == root  # already there
    assert len(server.requests) == n


def test_failed_extraction_leaves_no_corpus_folder(server, tmp_path):
    server.files["/r.zip"] = _zip({"Actor_01/a.wav": b"x", "../../evil": b"x"})
    with pytest.raises(DownloadError, match="points outside"):
        download_corpus("RAVDESS", tmp_path, url=f"{server.base}/r.zip", progress=False)
    assert _leftovers(tmp_path) == ["downloads"]


def test_wrong_archive_contents_are_reported(server, tmp_path):
    server.files["/r.zip"] = _zip({"readme.txt": b"x"})
    with pytest.raises(DownloadError, match="no Actor_NN/\\*.wav files .* not the RAVDESS speech zip"):
        download_corpus("RAVDESS", tmp_path, url=f"{server.base}/r.zip", progress=False)
    assert not (tmp_path / "RAVDESS").exists()


def test_meld_nested_archives_are_unpacked(server, tmp_path):
    header = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    inner = {
        "train": _tar({"train_splits/dia0_utt0.mp4": b"mp4"}),
        "dev": _tar({"dev_splits_complete/dia0_utt0.mp4": b"mp4"}),
        "test": _tar({"output_repeated_splits_test/dia0_utt0.mp4": b"mp4"}),
    }
    outer = {f"MELD.Raw/{s}_sent_emo.csv": header for s in inner}
    outer.update({f"MELD.Raw/{s}.tar.gz": blob for s, blob in inner.items()})
    server.files["/MELD.Raw.tar.gz"] = _tar(outer)
    root = download_corpus("meld", tmp_path, url=f"{server.base}/MELD.Raw.tar.gz", progress=False)
    assert (root / "train_sent_emo.csv").read_bytes() == header
    assert (root / "train" / "train_splits" / "dia0_utt0.mp4").read_bytes() == b"mp4"
    assert (root / "test" / "output_repeated_splits_test" / "dia0_utt0.mp4").exists()
    assert not list(root.glob("*.tar.gz"))


def test_emovdb_archives_from_mirror_land_in_speaker_emotion_folders(server, tmp_path, monkeypatch):
    for name in emovdb.NAMES:
        server.files[f"/slr115/{name}.tar.gz"] = _tar({f"{name.split('_')[1].lower()}_1-15_0001.wav": b"RIFF"})
    server.files["/cmuarctic.data"] = b'( arctic_a0001 "Author of the danger trail, Philip Steels, etc." )\n'
    monkeypatch.setattr(emovdb, "PROMPTS_URL", f"{server.base}/cmuarctic.data")
    root = download_corpus("EmoV-DB", tmp_path, url=f"{server.base}/slr115", progress=False)
    assert (root / "bea_Amused" / "amused_1-15_0001.wav").exists()
    assert (root / "josh_Sleepy" / "sleepy_1-15_0001.wav").exists()
    assert not (root / "josh_Angry").exists()
    assert (root / "cmuarctic.data").read_text().startswith("( arctic_a0001")
    with pytest.raises(DownloadError, match="18 archives"):
        download_corpus("emovdb", tmp_path / "x", sha256="0" * 64, progress=False)


def test_cremad_lfs_pointer_copy_is_detected(server, tmp_path):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n"
    server.files["/master.zip"] = _zip({"CREMA-D-master/AudioWAV/1001_DFA_ANG_XX.wav": pointer})
    with pytest.raises(DownloadError, match="Git LFS pointer files, not audio"):
        download_corpus("crema-d", tmp_path, url=f"{server.base}/master.zip", progress=False)
    assert not (tmp_path / "CREMA-D").exists()


def test_cremad_without_url_says_how_to_get_it(tmp_path):
    with pytest.raises(ManualDownload) as err:
        download_corpus("CREMA_D", tmp_path)
    msg = str(err.value)
    assert "git lfs pull --include 'AudioWAV/*'" in msg.replace("git -C", "git").replace(f" {tmp_path.resolve()}/CREMA-D", "")
    assert "ejlok1/cremad" in msg
    assert f"{tmp_path.resolve()}/CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav" in msg


# ------------------------------------------------------------------------------------------ gated


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("IEMOCAP", "IEMOCAP/IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"),
        ("mead", "MEAD/W019/audio/neutral/level_1/020.m4a"),
        ("esd", "ESD/0001/Neutral/0001_000001.wav"),
        ("msp-podcast", "MSP-Podcast/Labels/labels_consensus.csv"),
    ],
)
def test_gated_corpora_raise_instructions(tmp_path, name, layout):
    with pytest.raises(GatedCorpus) as err:
        download_corpus(name, tmp_path)
    msg = str(err.value)
    assert f"{tmp_path.resolve()}/{layout}" in msg
    assert f"mer-builder build --raw-root {tmp_path.resolve()}" in msg
    assert isinstance(err.value, DownloadError)
    assert not (tmp_path / corpus_folder(name)).exists()


def test_gated_corpus_already_in_place_is_returned(tmp_path):
    (tmp_path / "ESD" / "0001").mkdir(parents=True)
    assert download_corpus("ESD", tmp_path) == tmp_path / "ESD"


def test_names_match_case_and_punctuation_insensitively():
    assert corpus_folder("crema_d") == "CREMA-D"
    assert corpus_folder("EMO-DB") == "EmoDB"
    assert corpus_folder("emov db") == "EmoV-DB"
    assert set(CORPORA) == {"RAVDESS", "CREMA-D", "MELD", "EmoV-DB", "EmoDB", "IEMOCAP", "MEAD", "ESD",
                            "MSP-Podcast"}
    with pytest.raises(DownloadError, match="unknown corpus 'tess'; expected one of: RAVDESS, CREMA-D"):
        corpus_folder("tess")


# ------------------------------------------------------------------------------ broken archives (issue 10)


def test_truncated_tar_gz_is_a_one_line_error(tmp_path):
    whole = _tar({"MELD.Raw/a.bin": bytes(range(256)) * 4000})
    for cut in (40, len(whole) // 2):  # cut inside the gzip header's first block, then mid-stream
        archive = tmp_path / f"cut{cut}.tar.gz"
        archive.write_bytes(whole[:cut])
        with pytest.raises(DownloadError, match=rf"cut{cut}\.tar\.gz") as info:
            safe_extract(archive, tmp_path / f"out{cut}")
        assert "\n" not in str(info.value)
        assert not (tmp_path / f"out{cut}").exists()
    assert _leftovers(tmp_path) == sorted(f"cut{c}.tar.gz" for c in (40, len(whole) // 2))


def test_broken_download_without_checksum_is_deleted_and_a_rerun_fetches_it_again(server, tmp_path):
    url = f"{server.base}/mirror/Audio_Speech_Actors_01-24.zip"
    server.files["/mirror/Audio_Speech_Actors_01-24.zip"] = b"<html>503 try again later</html>"
    with pytest.raises(DownloadError, match=r"download from .* is broken: .* not a zip or tar archive; it was "
                                            r"deleted, rerun to download it again"):
        download_corpus("ravdess", tmp_path, url=url, progress=False)
    assert _leftovers(tmp_path / "downloads") == []
    server.files["/mirror/Audio_Speech_Actors_01-24.zip"] = _zip({"Actor_01/03-01-05-01-01-01-01.wav": b"RIFF"})
    root = download_corpus("ravdess", tmp_path, url=url, progress=False)  # the mirror is fixed: the rerun works
    assert (root / "Actor_01" / "03-01-05-01-01-01-01.wav").read_bytes() == b"RIFF"


def test_broken_archive_left_by_an_earlier_run_is_fetched_again(server, tmp_path):
    good = _zip({"Actor_01/03-01-05-01-01-01-01.wav": b"RIFF"})
    server.files["/r/Audio_Speech_Actors_01-24.zip"] = good
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "Audio_Speech_Actors_01-24.zip").write_bytes(good[: len(good) // 2])
    root = download_corpus("ravdess", tmp_path, url=f"{server.base}/r/Audio_Speech_Actors_01-24.zip", progress=False)
    assert (root / "Actor_01" / "03-01-05-01-01-01-01.wav").read_bytes() == b"RIFF"
    assert (tmp_path / "downloads" / "Audio_Speech_Actors_01-24.zip").read_bytes() == good


def test_archive_that_breaks_off_mid_stream_is_deleted_after_a_failed_extraction(server, tmp_path):
    whole = _tar({"Actor_01/03-01-05-01-01-01-01.wav": bytes((i * 7919) % 251 for i in range(400_000))})
    server.files["/r.tar.gz"] = whole[: len(whole) // 2]  # opens (first member readable), fails while extracting
    with pytest.raises(DownloadError, match=r"cannot extract .*r\.tar\.gz.*deleted .*: rerun to download it again"):
        download_corpus("ravdess", tmp_path, url=f"{server.base}/r.tar.gz", progress=False)
    assert _leftovers(tmp_path) == ["downloads"] and _leftovers(tmp_path / "downloads") == []

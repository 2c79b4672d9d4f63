"""The waveform cache (`data.wave_cache`, `mer.data.wave_cache`): reads equal decoding sample for sample for every
WAV format and crop, a changed or new file updates the cache (one line) and an unwritable folder is a one-line
error, a reader survives another process's update, the dataset yields the same items with it as without it, in
DataLoader workers too, and a pickled dataset carries no samples."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers_manifest import make_tone_manifest

from mer.data.audio import read_clip
from mer.data.manifest_dataset import ManifestDataset
from mer.data.wave_cache import INDEX_NAME, WaveCache, cache_folder
from mer.errors import UserError
from mer.schema import TaskConfig, ViewConfig

LABELS = ["anger", "joy", "sadness", "neutral"]
TASK = TaskConfig(labels=LABELS)

# (subtype, rate, channels): the cache stores 16-bit PCM as int16, anything else as float32
FORMATS = [("PCM_16", 16000, 1), ("PCM_16", 16000, 2), ("PCM_16", 22050, 1), ("FLOAT", 16000, 1),
           ("PCM_24", 8000, 2), ("DOUBLE", 44100, 1), ("PCM_U8", 16000, 1)]


def write_wav(path: Path, subtype: str, sr: int, channels: int, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = (0.4 * rng.standard_normal((int(seconds * sr), channels))).clip(-1, 1)
    if subtype == "FLOAT":
        x[::97] *= 2.5  # float WAVs may exceed full scale: kept, not clipped
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x if channels > 1 else x[:, 0], sr, subtype=subtype)
    return path


@pytest.mark.parametrize(("subtype", "sr", "channels"), FORMATS)
def test_reads_equal_decoding_sample_for_sample(tmp_path, subtype, sr, channels):
    path = write_wav(tmp_path / "a" / "clip.wav", subtype, sr, channels, 1.3)
    cache = WaveCache.open(tmp_path / "cache", tmp_path, [path], quiet=True)
    for max_s in (None, 0.5, 1.3, 5.0):
        for crop in ("start", "center", "random"):
            for seed in range(3):
                torch.manual_seed(seed)
                want = read_clip(path, max_s, crop=crop)
                after_decoding = torch.random.get_rng_state()
                torch.manual_seed(seed)
                got = cache.read(path, max_s, crop)
                assert got.dtype == np.float32 and np.array_equal(got, want), (max_s, crop, seed)
                assert torch.equal(torch.random.get_rng_state(), after_decoding)  # the same draws
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(cache.read(path, 0.4, "random", rng_a), read_clip(path, 0.4, "random", rng_b))
    kind = json.loads((tmp_path / "cache" / INDEX_NAME).read_text())["clips"]["a/clip.wav"][0]
    assert kind == (0 if subtype == "PCM_16" else 1)  # int16 for 16-bit PCM, float32 otherwise


def tone_view(manifest: Path, split: str, train: bool, **kw) -> ManifestDataset:
    return ManifestDataset(manifest, ViewConfig(split=split), TASK, split, max_audio_s=0.6, train=train, mode="A",
                           **kw)


def test_the_dataset_yields_the_same_items_with_the_cache_as_without(tmp_path, capsys):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 4, "val": 2})
    assert cache_folder(True, manifest) == manifest.parent / "meta_manifest.jsonl.wavecache"
    assert cache_folder(False, manifest) is None and cache_folder(str(tmp_path / "c"), manifest) == tmp_path / "c"
    for train in (True, False):
        plain = tone_view(manifest, "train", train)
        cached = tone_view(manifest, "train", train, wave_cache=True)
        assert cached.wave_cache is not None and len(cached.wave_cache) >= len(cached)
        torch.manual_seed(3)
        a = [plain[i]["audio"] for i in range(len(plain))]
        torch.manual_seed(3)
        b = [cached[i]["audio"] for i in range(len(cached))]
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    out = capsys.readouterr().out
    assert out.count("wave cache") == 1 and "built; decoded 16 file(s)" in out  # built once, then reused

    # DataLoader workers (the cache's maps are opened in each worker) read the same samples
    cached = tone_view(manifest, "train", False, wave_cache=True)
    loader = torch.utils.data.DataLoader(cached, batch_size=None, num_workers=2)
    got = [item["audio"] for item in loader]
    assert all(np.array_equal(np.asarray(g), read_clip(cached.paths[i], 0.6, crop="center"))
               for i, g in enumerate(got))
    # a pickled dataset (spawned workers) carries the cache's location, not its samples
    size = sum(p.stat().st_size for p in (manifest.parent / "meta_manifest.jsonl.wavecache").glob("waves-*"))
    blob = pickle.dumps(cached)
    assert len(blob) < size / 4
    again = pickle.loads(blob)
    assert np.array_equal(again.read_audio(0), cached.read_audio(0))


def test_a_changed_or_new_file_updates_the_cache_with_one_line(tmp_path, capsys):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 2, "val": 1})
    folder = tmp_path / "cache"
    tone_view(manifest, "train", False, wave_cache=str(folder))
    assert "built; decoded 8 file(s)" in capsys.readouterr().out
    first_files = sorted(p.name for p in folder.glob("waves-*"))

    # another view: its files are added, the others kept (copied, not decoded), the old data files removed
    tone_view(manifest, "val", False, wave_cache=str(folder))
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "0 clip(s) changed" in out and "4 new" in out and "kept 8" in out
    index = json.loads((folder / INDEX_NAME).read_text())
    assert len(index["clips"]) == 12 and not set(first_files) & {p.name for p in folder.glob("waves-*")}

    # a file rewritten (other samples, a later mtime): seen, re-decoded, read as the file now is
    ds = tone_view(manifest, "train", False)
    path = ds.paths[1]
    x = (0.5 * np.sin(np.arange(12000) / 5.0)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = tone_view(manifest, "train", False, wave_cache=str(folder))
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and f"1 clip(s) changed since it was built (first: {path})" in out
    assert "decoded 1 file(s), kept 11" in out
    assert np.array_equal(fresh.read_audio(1), read_clip(path, 0.6, crop="center"))

    # the manifest's sha256 of a file differs from the cached one: stale as well
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["sha256"] = "0" * 64
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tone_view(manifest, "train", False, wave_cache=str(folder))
    assert "1 clip(s) changed" in capsys.readouterr().out
    tone_view(manifest, "train", False, wave_cache=str(folder))
    assert capsys.readouterr().out == ""  # up to date: nothing decoded, nothing printed


def test_an_unwritable_cache_folder_is_a_one_line_error(tmp_path):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 1})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError) as err:
        tone_view(manifest, "train", False, wave_cache=str(blocker / "cache"))
    msg = str(err.value)
    assert "\n" not in msg and "data.wave_cache" in msg and str(blocker / "cache") in msg


def test_a_bad_wav_is_named_with_its_row(tmp_path):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 1})
    ds = tone_view(manifest, "train", False)
    ds.paths[2].write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match=r"an HTML page, not audio.*; manifest row "):
        tone_view(manifest, "train", False, wave_cache=True)
    assert not list((manifest.parent / "meta_manifest.jsonl.wavecache").glob("waves-*"))  # nothing half-written


def test_a_reader_keeps_reading_while_another_process_updates(tmp_path):
    a = write_wav(tmp_path / "a.wav", "PCM_16", 16000, 1, 0.5, seed=1)
    b = write_wav(tmp_path / "b.wav", "FLOAT", 16000, 1, 0.5, seed=2)
    reader = WaveCache.open(tmp_path / "c", tmp_path, [a, b], quiet=True)
    want_a, want_b = read_clip(a, None), read_clip(b, None)
    assert np.array_equal(reader.read(a), want_a) and np.array_equal(reader.read(b), want_b)  # both files mapped
    c = write_wav(tmp_path / "c.wav", "PCM_16", 16000, 1, 0.5, seed=3)
    WaveCache.open(tmp_path / "c", tmp_path, [c], quiet=True)  # an update: new data files, the old ones deleted
    assert np.array_equal(reader.read(a), want_a) and np.array_equal(reader.read(b), want_b)  # deleted, yet mapped
    assert reader.read(c) is None  # not in the index this reader loaded: the dataset decodes it
    fresh = WaveCache(tmp_path / "c", tmp_path)  # one that maps the files after the update: the new index
    assert np.array_equal(fresh.read(b), want_b) and np.array_equal(fresh.read(c), read_clip(c, None))
    late = pickle.loads(pickle.dumps(reader))  # a worker started now reads the new index
    assert all(np.array_equal(late.read(p), read_clip(p, None)) for p in (a, b, c))

    for data in (tmp_path / "c").glob("waves-*"):  # deleted by hand: a reader decodes, the next open rebuilds
        data.unlink()
    assert WaveCache(tmp_path / "c", tmp_path).read(a) is None
    rebuilt = WaveCache.open(tmp_path / "c", tmp_path, [a, b, c], quiet=True)
    assert all(np.array_equal(rebuilt.read(p), read_clip(p, None)) for p in (a, b, c))


def _open(folder: str, root: str, paths: list[str], queue) -> None:
    cache = WaveCache.open(folder, root, paths, quiet=True)
    queue.put([float(np.abs(cache.read(p)).sum()) for p in paths])


def test_two_processes_opening_a_missing_cache_take_turns(tmp_path):
    paths = [str(write_wav(tmp_path / f"w{i}.wav", "PCM_16", 16000, 1, 0.3, seed=i)) for i in range(6)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(str(tmp_path / "c"), str(tmp_path), paths, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    want = [float(np.abs(read_clip(p, None)).sum()) for p in paths]
    assert results == [want, want]
    assert len(list((tmp_path / "c").glob("waves-*"))) == 1  # one build; the second process found it complete

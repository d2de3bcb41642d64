"""The documents' published numbers as data (DESIGN.md convention 3) and fetch() of the authors' released
artifacts (DESIGN.md, "The authors' released artifacts": pinned commits, SHA-256 verified, cached under
runs/, RSBOOK_MIRROR accepted). Protects Cohen et al. 2019 Tables 1-2 as transcribed."""

import hashlib
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rsbook import published
from rsbook.published import ChecksumError

SHARED_MIRROR = Path("/work/shared/mirror")
LOCUSLAB_COMMIT = "78a4d949e4f627d000a78908e001f8ca66c92943"
RANCER_COMMIT = "ba05b4766968f526bb8e05d260cc7a8f1106729f"
NAME = "locuslab/smoothing/data/certify/imagenet/resnet50/noise_0.25/test/sigma_0.25"
PATH = "data/certify/imagenet/resnet50/noise_0.25/test/sigma_0.25"


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


# ----------------------------------------------------------------------------------------- numbers


def test_numbers_and_tables_load():
    cells, index = published.numbers(), published.tables()
    assert len(cells) > 100 and len(index) > 20
    assert {"document", "table", "row", "column", "value", "printed", "decimals", "unit"} <= set(cells.columns)
    assert {"document", "table", "title", "kind"} <= set(index.columns)
    assert cells["value"].dtype == np.float64
    assert not index.duplicated(["document", "table"]).any()


def test_every_numbered_table_is_listed():
    listed = set(zip(published.tables()["document"], published.tables()["table"]))
    numbered = set(zip(published.numbers()["document"], published.numbers()["table"]))
    assert numbered <= listed
    # every listed table except the unreadable ones has numbers
    unreadable = set(published.tables().query("kind == 'unreadable'")[["document", "table"]].itertuples(index=False))
    assert listed - numbered == unreadable == {("rancer", "Table 5.6")}


def test_documents_are_the_five_seeds():
    assert list(published.DOCUMENTS) == ["notes", "cohen", "fars", "lp", "rancer"]
    assert set(published.numbers()["document"]) <= set(published.DOCUMENTS)
    assert set(published.tables()["document"]) <= set(published.DOCUMENTS)


def test_values_keep_printed_precision():
    cells = published.numbers()
    assert (cells["printed"].astype(float) == cells["value"]).all()
    assert (cells["decimals"] == cells["printed"].map(lambda s: len(s.partition(".")[2]))).all()
    # Cohen Table 2, sigma = 0.50, r = 2.0 is printed '0.00'; Table 1 prints percent without decimals.
    t2 = published.numbers("cohen", "Table 2")
    cell = t2[(t2["row"] == "0.50") & (t2["column"] == "2.0")].iloc[0]
    assert (cell["printed"], cell["value"], cell["decimals"]) == ("0.00", 0.0, 2)
    t1 = published.numbers("cohen", "Table 1")
    cell = t1[(t1["row"] == "0.5") & (t1["column"] == "certified_accuracy")].iloc[0]
    assert (cell["printed"], cell["value"], cell["unit"], cell["decimals"]) == ("49", 49.0, "percent", 0)


def test_numbers_is_a_copy():
    cells = published.numbers("cohen", "Table 2")
    cells.loc[0, "value"] = -1.0
    assert (published.numbers("cohen", "Table 2")["value"] >= 0).all()


def test_cohen_table_2_layout():
    # DESIGN.md: rows sigma in {0.25, 0.50, 1.00}; columns r in {0.0, 0.5, ..., 3.0}.
    t2 = published.table("cohen", "Table 2")
    assert t2.index.tolist() == [0.25, 0.5, 1.0]
    assert t2.columns.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert t2.index.name == "sigma" and t2.columns.name == "radius"
    assert t2.loc[0.5, 1.0] == 0.37
    assert t2.loc[0.25].tolist() == [0.67, 0.49, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert t2.loc[1.0, 3.0] == 0.12
    assert (published.decimals("cohen", "Table 2") == 2).all().all()


def test_cohen_table_1_percent_to_fraction():
    t1 = published.table("cohen", "Table 1")
    assert t1.index.tolist() == [0.5, 1.0, 2.0, 3.0]
    assert t1.loc[0.5, "certified_accuracy"] == pytest.approx(0.49, abs=1e-12)
    assert t1.loc[0.5, "standard_accuracy"] == pytest.approx(0.67, abs=1e-12)
    assert t1.loc[1.0, "best_sigma"] == 0.5  # sigma is not a percent: not scaled
    raw = published.table("cohen", "Table 1", unit_scale={})
    assert raw.loc[0.5, "certified_accuracy"] == 49.0
    digits = published.decimals("cohen", "Table 1")
    assert digits.loc[0.5, "certified_accuracy"] == 2 and digits.loc[3.0, "standard_accuracy"] == 2
    assert digits.loc[0.5, "best_sigma"] == 2  # printed 0.25


def test_fars_table_keeps_mixed_precision():
    # DESIGN.md: FaRS Table 1 original at eps = 0.3 prints 0.3 (one decimal) where others print two.
    t = published.table("fars", "Table 1")  # column keys stay text: 'natural' is not a number
    assert t.columns.tolist() == ["natural", "0.05", "0.1", "0.2", "0.3"]
    assert t.loc["original", "0.3"] == pytest.approx(0.003, abs=1e-12)
    assert t.loc["sparsemax", "0.2"] == pytest.approx(0.2647, abs=1e-12)
    digits = published.decimals("fars", "Table 1")
    assert digits.loc["original", "0.3"] == 3 and digits.loc["original", "0.2"] == 4


def test_unknown_document_and_table():
    with pytest.raises(KeyError, match="unknown document"):
        published.table("smith", "Table 1")
    with pytest.raises(KeyError, match="Table 9"):
        published.table("cohen", "Table 9")
    with pytest.raises(KeyError):
        published.numbers("lp", "Table 1")


# ----------------------------------------------------------------------------------------- artifacts


def test_artifacts_are_pinned():
    arts = published.artifacts()
    assert len(arts) == 21
    locus, rancer = arts[arts["repo"] == "locuslab/smoothing"], arts[arts["repo"] == "tarasrumezhak/RANCER"]
    assert len(locus) == 17 and len(rancer) == 4
    assert set(locus["commit"]) == {LOCUSLAB_COMMIT} and set(rancer["commit"]) == {RANCER_COMMIT}
    assert arts["sha256"].map(lambda s: re.fullmatch(r"[0-9a-f]{64}", s) is not None).all()
    assert arts["name"].is_unique
    assert (arts["name"] == arts["repo"] + "/" + arts["path"]).all()
    assert (locus["kind"].value_counts().to_dict()) == {"certify_log": 13, "predict_log": 4}


def test_artifact_digests_match_mirror_sums():
    sums = dict(line.split()[::-1] for line in (SHARED_MIRROR / "SHA256SUMS").read_text().splitlines() if line)
    arts = published.artifacts()
    assert dict(zip(arts["name"], arts["sha256"])) == sums


def test_artifact_filters():
    imagenet = published.artifacts(kind="certify_log", dataset="imagenet")
    assert len(imagenet) == 6 and set(imagenet["dataset"]) == {"imagenet"}
    assert len(published.artifacts(kind="certify_log", dataset="cifar10")) == 7
    half = published.artifacts(sigma=0.5)  # numeric: matches the printed "0.50"
    assert len(half) == 8 and set(half["sigma"]) == {"0.50"}
    assert published.artifacts(sigma="0.50").equals(half)
    assert published.artifacts(kind="predict_log", n=100)["name"].tolist() == [
        "locuslab/smoothing/data/predict/imagenet/resnet50/noise_0.25/test/N_100"]
    assert published.artifacts(noise=1, sigma=1, dataset="imagenet")["path"].tolist() == [
        "data/certify/imagenet/resnet50/noise_1.00/test/sigma_1.00"]
    assert published.artifacts(dataset="mnist").empty
    with pytest.raises(KeyError, match="colour"):
        published.artifacts(colour="red")


def test_artifact_url():
    assert published.artifact_url(NAME) == (
        f"https://raw.githubusercontent.com/locuslab/smoothing/{LOCUSLAB_COMMIT}/{PATH}")
    with pytest.raises(KeyError, match="nope"):
        published.artifact_url("locuslab/smoothing/nope")


# ----------------------------------------------------------------------------------------- fetch


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A private mirror holding one real artifact, and a private runs folder."""
    root = tmp_path / "mirror"
    (root / NAME).parent.mkdir(parents=True)
    shutil.copyfile(SHARED_MIRROR / NAME, root / NAME)
    monkeypatch.setenv("RSBOOK_MIRROR", str(root))
    monkeypatch.setenv("RSBOOK_RUNS", str(tmp_path / "runs"))
    return root


def _expected(name=NAME):
    return published.artifacts().set_index("name").loc[name, "sha256"]


def test_fetch_from_mirror_and_cache(mirror, tmp_path):
    path = published.fetch(NAME)
    assert path == tmp_path / "runs" / "artifacts" / "locuslab/smoothing" / LOCUSLAB_COMMIT / PATH
    assert _sha256(path) == _expected()
    assert path.read_bytes() == (mirror / NAME).read_bytes()
    assert _files(tmp_path / "runs") == [path]  # no temporary files left
    (mirror / NAME).unlink()  # the second call must not need the mirror
    assert published.fetch(NAME) == path
    assert _sha256(path) == _expected()


def test_fetch_to_explicit_cache(mirror, tmp_path):
    path = published.fetch(NAME, cache=tmp_path / "elsewhere")
    assert path == tmp_path / "elsewhere" / "locuslab/smoothing" / LOCUSLAB_COMMIT / PATH
    assert _files(tmp_path / "runs") == []


def test_fetch_checksum_mismatch_leaves_nothing(mirror, tmp_path):
    (mirror / NAME).write_bytes((SHARED_MIRROR / NAME).read_bytes() + b"0\t0\t0\t0.1\t1\t0:00:01\n")
    with pytest.raises(ChecksumError) as err:
        published.fetch(NAME)
    assert isinstance(err.value, ValueError)
    assert NAME in str(err.value) and _expected() in str(err.value)
    assert _files(tmp_path / "runs") == []


def test_fetch_missing_from_mirror(mirror, tmp_path):
    (mirror / NAME).unlink()
    with pytest.raises(FileNotFoundError) as err:
        published.fetch(NAME)
    assert NAME in str(err.value) and _expected() in str(err.value)
    assert _files(tmp_path / "runs") == []


def test_fetch_replaces_corrupt_cache(mirror, tmp_path):
    path = published.fetch(NAME)
    path.write_bytes(b"idx\tlabel\tpredict\tradius\tcorrect\ttime\n")  # e.g. a truncated copy
    again = published.fetch(NAME)
    assert again == path
    assert _sha256(path) == _expected()
    assert _files(tmp_path / "runs") == [path]


def test_fetch_corrupt_cache_and_bad_mirror(mirror, tmp_path):
    path = published.fetch(NAME)
    path.write_bytes(b"garbage")
    (mirror / NAME).write_bytes(b"other garbage")
    with pytest.raises(ChecksumError):
        published.fetch(NAME)
    assert _files(tmp_path / "runs") == []  # the bad cached copy is not served later


def test_fetch_unknown_artifact(mirror, tmp_path):
    with pytest.raises(KeyError, match="unknown artifact"):
        published.fetch("locuslab/smoothing/data/certify/mnist/sigma_0.25")
    assert _files(tmp_path / "runs") == []


def test_fetch_mirror_not_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RSBOOK_MIRROR", str(tmp_path / "no-such-mirror"))
    monkeypatch.setenv("RSBOOK_RUNS", str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match="RSBOOK_MIRROR"):
        published.fetch(NAME)
    assert _files(tmp_path / "runs") == []


def test_fetch_download_failure_names_url(tmp_path, monkeypatch):
    monkeypatch.delenv("RSBOOK_MIRROR", raising=False)
    monkeypatch.setenv("RSBOOK_RUNS", str(tmp_path / "runs"))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError) as err:
        published.fetch(NAME)
    url = published.artifact_url(NAME)
    assert calls == [url]
    assert url in str(err.value) and "RSBOOK_MIRROR" in str(err.value)
    assert _files(tmp_path / "runs") == []


def test_fetch_download_verifies_checksum(tmp_path, monkeypatch):
    # The download path is held to the same digest as the mirror path.
    import io

    monkeypatch.delenv("RSBOOK_MIRROR", raising=False)
    monkeypatch.setenv("RSBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: io.BytesIO(b"not the file"))
    with pytest.raises(ChecksumError, match=re.escape(published.artifact_url(NAME))):
        published.fetch(NAME)
    assert _files(tmp_path / "runs") == []
    good = (SHARED_MIRROR / NAME).read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: io.BytesIO(good))
    assert _sha256(published.fetch(NAME)) == _expected()


# ----------------------------------------------------------------------------------------- released logs


@pytest.fixture(scope="module")
def real_mirror(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RSBOOK_MIRROR", str(SHARED_MIRROR))
        mp.setenv("RSBOOK_RUNS", str(tmp_path_factory.mktemp("runs")))
        yield


def test_released_logs(real_mirror):
    certify = published.released_logs("certify_log")
    assert len(certify) == 13
    for log in certify["log"]:
        assert list(log.columns) == ["idx", "label", "predict", "radius", "correct", "time"]
    predict = published.released_logs("predict_log")
    assert len(predict) == 4
    assert all("radius" not in log for log in predict["log"])


def test_released_certify_logs(real_mirror):
    imagenet = published.released_certify_logs("imagenet")
    assert set(imagenet) == {(0.25, 0.25), (0.25, 0.5), (0.5, 0.5), (1.0, 0.5), (1.0, 1.0)}
    assert len(imagenet[(0.25, 0.25)]) == 427  # the released log stops short of 500 rows
    assert all(len(imagenet[key]) == 500 for key in imagenet if key != (0.25, 0.25))
    assert imagenet[(0.25, 0.25)]["radius"].iloc[1] == 0.978
    assert (np.diff(imagenet[(1.0, 1.0)]["idx"]) == 100).all()  # every 100th ImageNet val image
    cifar = published.released_certify_logs("cifar10")
    assert len(cifar) == 7 and all(len(log) == 500 for log in cifar.values())
    assert (np.diff(cifar[(0.12, 0.12)]["idx"]) == 20).all()  # every 20th CIFAR-10 test image
    train = published.released_certify_logs("imagenet", split="train")
    assert list(train) == [(0.5, 0.5)] and len(train[(0.5, 0.5)]) == 513


def test_released_predict_logs(real_mirror):
    logs = published.released_predict_logs()
    assert sorted(logs) == [100, 1000, 10000, 100000]
    assert all(len(log) == 500 for log in logs.values())


def test_released_logs_max_rows(real_mirror):
    logs = published.released_certify_logs("imagenet", max_rows=7)
    assert all(len(log) == 7 for log in logs.values())
    full = published.released_certify_logs("imagenet")
    pd.testing.assert_frame_equal(logs[(0.5, 0.5)], full[(0.5, 0.5)].head(7))
    assert all(len(log) == 3 for log in published.released_predict_logs(max_rows=3).values())


def test_released_logs_no_match(real_mirror):
    with pytest.raises(KeyError, match="no released logs"):
        published.released_certify_logs("imagenet", sigma=0.12)

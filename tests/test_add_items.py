"""New items join the index without retraining, and are found by queries about them."""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

from towerrec.config import to_dict
from towerrec.data.dataset import ADDED_ITEMS, DataError
from towerrec.data.features import pad_history
from towerrec.export.index import Index
from towerrec.export.publish import exclusive, run_lock
from towerrec.pipelines.add_items import add_items
from towerrec.pipelines.cli import main
from towerrec.training.train import train

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import slice_config

# Trains models, serves exports or starts processes: `make test` runs it, `make test-fast`
# does not.
pytestmark = pytest.mark.large

NEW = pd.DataFrame({
    "item_id": ["new-1", "new-2"],
    # The slice's items are generic CSV whose text column holds MovieLens' full item text.
    "title": ["Star Wars: Episode I - The Phantom Menace (1998). Action, Adventure, Sci-Fi, War",
              "A Quiet Documentary About Accounting (1997). Documentary"],
    "genres": ["Action|Adventure|Sci-Fi|War", "Documentary"],
    "year": [1998, 1997]})
STAR_WARS_FAN = ["50", "172", "181"]  # Star Wars, The Empire Strikes Back, Return of the Jedi


@pytest.fixture(scope="module")
def trained(minilm_dir, movielens_slice, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("add_items_run")
    (run_dir / "encoder").symlink_to(minilm_dir)
    config = slice_config(movielens_slice, run_dir, **{"training.epochs": 6})
    train(config, verbose=0)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["index", "--config", str(config_path)]) == 0
    return config


def test_added_item_is_retrieved_for_a_matching_query(trained, tmp_path):
    path = tmp_path / "new.csv"
    NEW.to_csv(path, index=False)
    result = add_items(trained, str(path), tmp_path / "models")
    run = result.run
    catalogue = list(run.catalogue["item_id"])
    assert catalogue[-2:] == ["new-1", "new-2"] and len(catalogue) == 1684

    index = Index(trained.run_path / "index")
    assert len(index.item_ids) == 1684
    from towerrec.data.features import Queries
    from towerrec.evaluation.evaluate import query_embeddings
    query = Queries(np.array([""], dtype=object), pad_history([STAR_WARS_FAN], 20),
                    np.array(["a 25 year old man, student, Saturday evening"], dtype=object),
                    [np.array([0])], [np.array([], np.int64)])
    ids, _ = index.search(query_embeddings(run, query), len(catalogue))
    ranked = [i for i in ids[0] if i not in STAR_WARS_FAN]
    # Ranked among the whole catalogue: the matching new item is in the top 10% (of 1,684;
    # 71-124 over training seeds 7-9), the unrelated one far down.
    assert ranked.index("new-1") < 170, ranked.index("new-1")
    assert ranked.index("new-2") > 500, ranked.index("new-2")
    assert sorted(result.exports) == ["candidate_tower", "query_tower",
                                         "retrieval_brute_force", "retrieval_scann"]


def test_existing_id_is_refused_and_nothing_changes(trained, tmp_path):
    before = Index(trained.run_path / "index").item_ids.copy()
    added = trained.run_path / ADDED_ITEMS
    added_before = added.read_bytes() if added.exists() else None
    path = tmp_path / "dupe.csv"
    NEW.assign(item_id=["50", "new-3"]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"already in the catalogue: \['50'\]"):
        add_items(trained, str(path), tmp_path / "models")
    np.testing.assert_array_equal(Index(trained.run_path / "index").item_ids, before)
    assert (added.read_bytes() if added.exists() else None) == added_before
    assert not [p for p in (tmp_path / "models").glob("*/*")]  # nothing staged or published


def test_add_items_again_after_a_kill_resumes_instead_of_refusing(trained, tmp_path):
    """A kill after the run took the items and before the models were published: the run
    has them, no served model does. The same add-items again finishes the job."""
    path = tmp_path / "new.csv"
    NEW.assign(item_id=["resume-1", "resume-2"]).to_csv(path, index=False)
    first = add_items(trained, str(path))  # no base path: the "published" part never ran
    assert list(first.items["item_id"]) == ["resume-1", "resume-2"]
    again = add_items(trained, str(path), tmp_path / "models")
    assert len(again.items) == 0 and again.resumed == 2
    assert sorted(again.exports) == ["candidate_tower", "query_tower",
                                        "retrieval_brute_force", "retrieval_scann"]
    assert list(pd.read_parquet(trained.run_path / ADDED_ITEMS)["item_id"]).count(
        "resume-1") == 1
    changed = tmp_path / "changed.csv"
    NEW.assign(item_id=["resume-1", "resume-3"], year=[1960, 1961]).to_csv(changed,
                                                                          index=False)
    with pytest.raises(DataError, match=r"added before with other values: \['resume-1'\]"):
        add_items(trained, str(changed))


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(year=["1998", "nineteen-ninety"]),
     "column 'year' must be a number; row 1 has 'nineteen-ninety'"),
    (lambda f: f.assign(item_id=["bad-1", ""]), "row 1 has an empty item_id"),
    (lambda f: f.assign(title=["", "A title"]), "row 0 has an empty title"),
    (lambda f: f.assign(price=[1, 2]), "unknown column(s) ['price']"),
    (lambda f: f.drop(columns="genres"), "no column(s) ['genres']"),
])
def test_bad_item_data_is_refused_naming_file_column_and_row(trained, tmp_path, change,
                                                             message):
    added = trained.run_path / ADDED_ITEMS
    before = added.read_bytes() if added.exists() else None
    path = tmp_path / "bad.csv"
    change(NEW.assign(item_id=["bad-1", "bad-2"])).to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        add_items(trained, str(path), tmp_path / "models")
    assert str(path) in str(error.value) and message in str(error.value), str(error.value)
    assert (added.read_bytes() if added.exists() else None) == before
    assert not [p for p in (tmp_path / "models").glob("*/*")]


def test_two_add_items_at_once_keep_both_items(trained, tmp_path):
    """Both writers are started while this test holds the run's lock, and both are seen
    waiting for it before it is let go: they run together, whatever their start-up takes."""
    config = trained.run_path / "config.yaml"
    writers = []
    with run_lock(trained.run_path):
        for name in ("together-1", "together-2"):
            path = tmp_path / f"{name}.csv"
            NEW.iloc[:1].assign(item_id=[name]).to_csv(path, index=False)
            writers.append(Lines([sys.executable, "-m", "towerrec.pipelines.cli", "add-items",
                                  "--config", str(config), str(path)]))
        for writer in writers:
            writer.wait_for("waiting for another towerrec", timeout=600)
    codes = [writer.finish(timeout=600) for writer in writers]
    assert codes == [0, 0], [writer.lines for writer in writers]
    added = list(pd.read_parquet(trained.run_path / ADDED_ITEMS)["item_id"])
    assert {"together-1", "together-2"} <= set(added)


def test_the_publish_lock_is_reentrant_in_a_thread_not_across_threads(tmp_path):
    refused = []
    with exclusive(tmp_path / "models"):
        with exclusive(tmp_path / "models"):  # the same thread: re-entrant
            other = threading.Thread(target=lambda: refused.append(
                _raises(lambda: exclusive(tmp_path / "models").__enter__())))
            other.start()
            other.join(60)
    assert refused and isinstance(refused[0], DataError) and "another towerrec" in str(
        refused[0])


def _raises(call):
    try:
        call()
    except Exception as error:
        return error
    return None


class Lines:
    """A child process whose output lines are read as they come."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list = []
        self._queue: "queue.Queue[str]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None and self._queue.empty():
                self.process.kill()
                raise AssertionError(f"no line with {text!r}: {self.lines}")
            try:
                self.lines.append(self._queue.get(timeout=min(left, 1.0)))
            except queue.Empty:
                pass

    def finish(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(30)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code


def test_a_movielens_title_that_is_empty_is_refused_though_a_year_follows(tmp_path):
    from towerrec.config import load_config
    from towerrec.pipelines.add_items import read_new_items
    path = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["m-1"], "title": ["  "], "genres": ["Drama"],
                  "year": [1995]}).to_csv(path, index=False)
    config = load_config(None, {"run_dir": str(tmp_path / "run")})
    assert config.data.source == "movielens-100k"
    with pytest.raises(DataError, match="row 0 has an empty title"):
        read_new_items(str(path), config, catalogue_ids=[])


def test_an_item_stored_by_an_older_add_items_is_the_same_item(tmp_path):
    """Older runs stored no `title` and kept texts whole; a resume must not call that item
    changed."""
    from towerrec.data.dataset import MAX_TEXT_CHARS
    from towerrec.pipelines.add_items import _same_row
    long_text = "word " * (MAX_TEXT_CHARS // 4)
    now = pd.Series({"title": "T", "text": long_text[:MAX_TEXT_CHARS].strip(), "year": np.nan})
    older = pd.Series({"text": long_text, "year": np.nan})
    assert _same_row(now, older)
    assert not _same_row(now, pd.Series({"text": "other", "year": np.nan}))
    assert not _same_row(now, pd.Series({"text": long_text, "year": 1995.0}))

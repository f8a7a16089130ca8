"""Seeded synthetic catalogues for scale tests, written as Parquet shards.

`generate(directory, size, seed)` always writes the same data for the same size and seed::

    directory/items/part-00000.parquet ...         item_id, title, categories, price, topic
    directory/interactions/part-00000.parquet ...  user_id, item_id, timestamp, context_text
    directory/synthetic.json                       size, seed, counts, generator version

What there is to learn:

* Every item has one hidden topic (`topic`: ground truth for tests, no source reads it). Its
  title is 2-3 words of the topic's pseudo-word vocabulary (the first word most often) and
  2-3 generic English words that carry no signal. Its 1-3 categories ("a|b") lean on the
  topic; its price is lognormal around a topic mean, 3% missing.
* Topics differ in popularity (the topic of rank r weighs 1/r) and, less, in size.
  Popularity is Zipf-like inside a topic too: the item of rank r weighs 1/r.
* A user has 1-3 preferred topics at the start of their timeline and as many at its end (each
  replaced with probability 1/2); an interaction picks the start or the end set with
  weights that move linearly along the timeline, or 15% of the time any topic, then an item
  by popularity. A repeated (user, item) pair is drawn again, uniformly inside the topic
  (then inside any topic, for a user who has used the topic up): repeats are rare.
* Timestamps (unix seconds) span two years; users start at different times.
* Half of the context texts name a topic the user likes at that time ("looking for brantel,
  weekday evening"), the others are generic ("browsing on mobile, weekend night"); the time
  words are the timestamp's. There are at most 8 * (2 * topics + 4) distinct contexts (3,072
  at L), as BERT encodes each distinct one once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from towerrec.config import CUSTOM_SIZE, SYNTHETIC_SIZES, ConfigError, DataConfig
from towerrec.data.dataset import Dataset, interactions_frame, items_frame

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger("towerrec.steps")  # the step reports the CLI shows

SIZES, CUSTOM = SYNTHETIC_SIZES, CUSTOM_SIZE
COUNTS = ("items", "interactions", "users")
# Bumped whenever the same (size, seed) would give different data.
VERSION = 1
METADATA = "synthetic.json"
# Users are generated in blocks of about this many interactions (memory stays flat at L);
# fixed, so that shard_rows changes the files but not the data.
BLOCK_ROWS = 1_000_000
START = 1_672_531_200  # 2023-01-01
SPAN = 2 * 365 * 86_400
WORDS_PER_TOPIC = 24
WORD_SKEW = 1.5
EXPLORATION = 0.15
TOPIC_SKEW = 1.0
ITEM_SKEW = 0.5
TOPIC_CONTEXT = 0.5
TOPIC_TEMPLATES = ("looking for {}", "in the mood for {}")
GENERIC_CONTEXTS = ("browsing on mobile", "browsing on desktop", "just looking around",
                    "back on the app")
DAY_PARTS = ("night", "morning", "afternoon", "evening")  # from 23h, 6h, 12h, 18h
FILLERS = """
classic new original deluxe premium essential basic compact mini max plus pro lite ultra
super extra special limited edition series collection set pack bundle kit box vintage modern
retro simple smart easy quick daily home travel family junior standard advanced complete
official select signature golden silver black white blue red green grey large small medium
light heavy soft fresh natural pure everyday holiday summer winter spring autumn deep bright
quiet bold wild urban rustic royal grand little big first second third prime core ultimate
studio master starter value choice favourite best great true real fine rare odd plain happy
lucky northern southern eastern western city country ocean river mountain forest garden
street road story guide book note line style mode form volume part piece
""".split()
ONSETS = ("b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr r s sh sk sl sp st t th "
          "tr v w z").split()
VOWELS = "a e i o u ai au ea ee ie oa oo ou".split()
CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "st", "x", "k"]
# The column roles of the synthetic tables (the config's own roles are ignored).
ROLES: Dict[str, Any] = dict(item_id_column="item_id", text_columns=["title"],
                             categorical_columns=["categories"], numeric_columns=["price"],
                             context_column="context_text", timestamp_column="timestamp",
                             user_id_column="user_id", rating_column=None)


def generate(directory, size: str = "S", seed: int = 0, items: Optional[int] = None,
             interactions: Optional[int] = None, users: Optional[int] = None,
             shard_rows: int = 1_000_000) -> dict:
    """Writes the catalogue of `size` (SIZES, or "custom" with the three counts) and `seed`
    into `directory` (shards of at most `shard_rows` rows) and returns its metadata.

    The folder is written aside and renamed into place. An existing `directory` is replaced
    only when it is empty or holds the same size, seed and counts (a rerun)."""
    counts = synthetic_counts(size, items or 0, interactions or 0, users or 0)
    if shard_rows <= 0:
        raise ConfigError(f"shard_rows must be positive, got {shard_rows}")
    directory = Path(directory)
    metadata = {**_identity(size, seed, counts), "topics": topics_for(counts[0])}
    _check_replaceable(directory, metadata)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        catalogue = _Catalogue(np.random.default_rng([seed, 0]), counts[0])
        metadata["item_shards"] = _write_shards(temporary / "items", [catalogue.table],
                                                shard_rows)
        metadata["interaction_shards"] = _write_shards(
            temporary / "interactions", _interactions(seed, catalogue, *counts[1:]),
            shard_rows)
        (temporary / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        _move_into_place(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return metadata


def load_synthetic(data: DataConfig) -> Dataset:
    """The `Dataset` of `data.size` and `data.synthetic_seed`, read from `synthetic_path`
    (generated there first when it is not there yet)."""
    path = synthetic_path(data)
    given = (data.synthetic_items, data.synthetic_interactions, data.synthetic_users)
    wanted = _identity(data.size, data.synthetic_seed, synthetic_counts(data.size, *given))
    found = read_metadata(path) or {}
    if any(found.get(k) != v for k, v in wanted.items()):
        log.info("generating the synthetic catalogue %s (seed %d) in %s", data.size,
                 data.synthetic_seed, path)
        generate(path, data.size, data.synthetic_seed, *given)
    roles = DataConfig(source="synthetic", path=str(path), **ROLES)
    items = _read_shards(path / "items", ["item_id", "title", "categories", "price"])
    inter = _read_shards(path / "interactions",
                         ["user_id", "item_id", "timestamp", "context_text"])
    return Dataset(interactions_frame(inter, roles, str(path / "interactions")),
                   items_frame(items, roles, str(path / "items")),
                   list(ROLES["categorical_columns"]), list(ROLES["numeric_columns"]))


def synthetic_path(data: DataConfig) -> Path:
    """`data.path`, or data/synthetic-<size>-seed<seed> (from the working directory)."""
    return Path(data.path or f"data/synthetic-{data.size}-seed{data.synthetic_seed}")


def synthetic_counts(size: str, items: int = 0, interactions: int = 0,
                     users: int = 0) -> Tuple[int, int, int]:
    """(items, interactions, users) of a size; the counts are for "custom" only."""
    given = (items, interactions, users)
    if size == CUSTOM:
        if min(given) <= 0 or interactions < users:
            raise ConfigError(f"synthetic size custom needs positive items, interactions and "
                              f"users, and interactions >= users; got {given}")
        return given
    if size not in SIZES:
        raise ConfigError(f"synthetic size {size!r} is not one of "
                          f"{', '.join([*SIZES, CUSTOM])}")
    if any(given):
        raise ConfigError(f"item, interaction and user counts go with size custom; size "
                          f"{size} is {SIZES[size]}")
    return SIZES[size]


def topics_for(items: int) -> int:
    """Topics grow like items ** 0.25: 34 at XS, 60 at S, 107 at M, 190 at L."""
    return int(min(200, max(1, round(6 * items ** 0.25)), max(1, items // 5)))


def _identity(size: str, seed: int, counts) -> dict:
    """What makes two catalogues the same data."""
    return {"generator_version": VERSION, "size": size, "seed": int(seed),
            **dict(zip(COUNTS, counts))}


def read_metadata(directory) -> Optional[dict]:
    try:
        return json.loads((Path(directory) / METADATA).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(directory: Path, metadata: dict):
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return
    found = read_metadata(directory) if directory.is_dir() else None
    same = ("size", "seed", *COUNTS)
    if found is None or any(found.get(k) != metadata[k] for k in same):
        holds = (f" (it holds size {found.get('size')} seed {found.get('seed')})"
                 if found else "")
        raise FileExistsError(f"{directory} exists and is not a synthetic catalogue of size "
                              f"{metadata['size']} seed {metadata['seed']}{holds}")


def _move_into_place(temporary: Path, directory: Path):
    if not directory.exists():
        os.rename(temporary, directory)
        return
    # Aside first: a rename does not replace a folder that has files.
    previous = Path(tempfile.mkdtemp(prefix=f".{directory.name}-old-", dir=directory.parent))
    os.rename(directory, previous / "data")
    os.rename(temporary, directory)
    shutil.rmtree(previous)


def _write_shards(folder: Path, tables: Iterable[pa.Table], shard_rows: int) -> int:
    """Writes the tables' rows, in order, as part-NNNNN.parquet of `shard_rows` rows (the
    last one fewer); returns the number of files."""
    folder.mkdir()
    pending, written = [], 0
    for table in [*tables, None]:  # None: the end, write what is left
        if table is not None:
            pending.append(table)
        rows = sum(len(t) for t in pending)
        if rows < shard_rows and (table is not None or rows == 0):
            continue
        joined = pa.concat_tables(pending)
        end = rows if table is None else rows // shard_rows * shard_rows
        for start in range(0, end, shard_rows):
            pq.write_table(joined.slice(start, min(shard_rows, end - start)),
                           folder / f"part-{written:05d}.parquet")
            written += 1
        pending = [joined.slice(end)]
    return written


def _read_shards(folder: Path, columns):
    files = sorted(folder.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).to_pandas()


def _ids(prefix: str, n: int) -> pa.Array:
    """prefix + zero-padded index, e.g. "i0000123"."""
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n)), pa.string()),
                          width=max(7, len(str(n - 1))), padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _words(vocabulary: pa.Array, index: np.ndarray, keep=None) -> pa.Array:
    """vocabulary[index], null where `keep` is False."""
    return vocabulary.take(pa.array(index, mask=None if keep is None else ~keep))


def _join(columns, separator: str) -> pa.Array:
    return pc.binary_join_element_wise(*columns, separator, null_handling="skip")


def _distinct(rng, n: int, choices: int, k: int) -> np.ndarray:
    """(n, k) indices in [0, choices), distinct within a row, uniform."""
    picked = np.empty((n, k), np.int64)
    for j in range(k):
        value = rng.integers(choices - j, size=n)
        # Skip the values already taken, smallest first: uniform over the rest.
        for taken in np.sort(picked[:, :j], axis=1).T:
            value += value >= taken
        picked[:, j] = value
    return picked


def _pseudo_words(rng, n: int) -> list:
    """`n` distinct pronounceable words ("brantel", "shoaveex"), none of them a filler."""
    syllables = np.array([o + v for o in ONSETS for v in VOWELS])
    fillers = set(FILLERS)
    words: Dict[str, None] = {}  # an insertion-ordered set
    while len(words) < n:
        k = 2 * n
        parts = syllables[rng.integers(len(syllables), size=(k, 3))]
        three = rng.random(k) < 0.3
        endings = np.array(CODAS)[rng.integers(len(CODAS), size=k)]
        for a, b, c, third, end in zip(*parts.T, three, endings):
            word = a + b + (c if third else "") + end
            if word not in fillers:
                words.setdefault(word, None)
    return list(words)[:n]


class _Catalogue:
    """Items (`table`), their topics and the within-topic popularity to draw items from."""

    def __init__(self, rng, n_items: int):
        topics = self.topics = topics_for(n_items)
        probs = 1.0 / (np.arange(topics) + 1) ** TOPIC_SKEW
        self.topic_probs = rng.permutation(probs / probs.sum())
        # Every topic has at least one item; popular topics have more items, less than in
        # proportion.
        sizes = self.topic_probs ** ITEM_SKEW / (self.topic_probs ** ITEM_SKEW).sum()
        item_topic = rng.permutation(np.concatenate([
            np.arange(topics), rng.choice(topics, n_items - topics, p=sizes)]))
        # Items sorted by topic, in random order inside it: the position is the rank.
        self.order = np.lexsort((rng.random(n_items), item_topic))
        sorted_topic = item_topic[self.order]
        self.topic_size = np.bincount(item_topic, minlength=topics)
        self.topic_start = np.cumsum(self.topic_size) - self.topic_size
        rank = np.arange(n_items) - self.topic_start[sorted_topic] + 1
        weight = np.cumsum(1.0 / rank)
        before = np.where(self.topic_start > 0, weight[self.topic_start - 1], 0.0)
        last = self.topic_start + self.topic_size - 1
        within = (weight - before[sorted_topic]) / (weight[last] - before)[sorted_topic]
        within[last] = 1.0
        # Topic k's items span (k, k + 1]: one searchsorted draws for every topic at once.
        self.cdf = sorted_topic + within

        vocabulary = _pseudo_words(rng, topics * WORDS_PER_TOPIC + 200)
        topic_words = vocabulary[:topics * WORDS_PER_TOPIC]
        self.topic_names = topic_words[::WORDS_PER_TOPIC]
        categories = min(200, max(50, topics))
        category_names = pa.array([w.capitalize() for w in vocabulary[-categories:]])
        self.item_ids = _ids("i", n_items)
        self.table = pa.table({
            "item_id": self.item_ids,
            "title": self._titles(rng, item_topic, pa.array(topic_words)),
            "categories": self._categories(rng, item_topic, category_names),
            "price": self._prices(rng, item_topic),
            "topic": pa.array(item_topic.astype(np.int32))})

    def draw(self, rng, topic: np.ndarray, uniform: bool = False) -> np.ndarray:
        """One item index per topic: by popularity, or uniformly inside the topic."""
        u = rng.random(len(topic))
        if uniform:
            position = self.topic_start[topic] + (u * self.topic_size[topic]).astype(np.int64)
        else:
            position = np.minimum(np.searchsorted(self.cdf, topic + u, side="right"),
                                  self.topic_start[topic] + self.topic_size[topic] - 1)
        return self.order[position]

    def _titles(self, rng, item_topic, topic_words: pa.Array) -> pa.Array:
        n = len(item_topic)
        # 2-3 distinct topic words, word j with weight 1/j^WORD_SKEW: the first to arrive in
        # an exponential race with those rates.
        arrival = (rng.standard_exponential((n, WORDS_PER_TOPIC), dtype=np.float32)
                   * np.arange(1, WORDS_PER_TOPIC + 1, dtype=np.float32) ** WORD_SKEW)
        chosen = np.argsort(arrival, axis=1)[:, :3] + (item_topic * WORDS_PER_TOPIC)[:, None]
        del arrival
        three_words = rng.random(n) < 0.5
        fillers = _distinct(rng, n, len(FILLERS), 3)
        three_fillers = rng.random(n) < 0.5
        filler_words = pa.array(FILLERS)
        return _join([_words(filler_words, fillers[:, 0]),
                      _words(topic_words, chosen[:, 0]), _words(topic_words, chosen[:, 1]),
                      _words(topic_words, chosen[:, 2], three_words),
                      _words(filler_words, fillers[:, 1]),
                      _words(filler_words, fillers[:, 2], three_fillers)], " ")

    def _categories(self, rng, item_topic, names: pa.Array) -> pa.Array:
        n, count = len(item_topic), len(names)
        usual = rng.integers(count, size=(self.topics, 2))
        first = np.where(rng.random(n) < 0.85, usual[item_topic, 0], rng.integers(count, size=n))
        second = np.where(rng.random(n) < 0.6, usual[item_topic, 1], rng.integers(count, size=n))
        third = rng.integers(count, size=n)
        how_many = rng.choice([1, 2, 3], size=n, p=[0.4, 0.4, 0.2])
        return _join([_words(names, first),
                      _words(names, second, (how_many >= 2) & (second != first)),
                      _words(names, third, (how_many == 3) & (third != first)
                             & (third != second))], "|")

    def _prices(self, rng, item_topic) -> pa.Array:
        mean = rng.normal(3.2, 0.8, self.topics)
        price = np.round(np.exp(mean[item_topic] + rng.normal(0, 0.35, len(item_topic))), 2)
        price[rng.random(len(price)) < 0.03] = np.nan
        return pa.array(price)


class _Users:
    """Per user: the interaction count and the topic mixes at the start and the end."""

    def __init__(self, rng, catalogue: _Catalogue, n_interactions: int, n_users: int):
        # Heavy-tailed counts, at least `least`, summing to n_interactions exactly.
        least = min(5, n_interactions // n_users)
        share = rng.lognormal(0.0, 1.0, n_users)
        share *= (n_interactions - least * n_users) / share.sum()
        self.counts = least + np.floor(share).astype(np.int64)
        missing = n_interactions - self.counts.sum()
        self.counts[np.argsort(np.floor(share) - share)[:missing]] += 1
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.preferred = rng.choice([1, 2, 3], size=n_users, p=[0.4, 0.4, 0.2])
        topics, probs = catalogue.topics, catalogue.topic_probs
        self.early = rng.choice(topics, size=(n_users, 3), p=probs)
        self.late = np.where(rng.random((n_users, 3)) < 0.5, self.early,
                             rng.choice(topics, size=(n_users, 3), p=probs))
        self.first_time = START + rng.uniform(0, 0.75, n_users) * SPAN
        self.duration = np.maximum(
            (START + SPAN - self.first_time) * rng.uniform(0.1, 1.0, n_users), 86_400)
        self.ids = _ids("u", n_users)

    def blocks(self):
        """(first, end) user ranges of about BLOCK_ROWS interactions."""
        block = self.offsets[:-1] // BLOCK_ROWS
        bounds = np.flatnonzero(np.diff(np.concatenate([[-1], block, [-2]])))
        return zip(bounds[:-1], bounds[1:])

    def liked_topic(self, rng, user: np.ndarray, progress: np.ndarray) -> np.ndarray:
        """A topic of each user's mix at `progress` (0 to 1) along their timeline."""
        slot = (rng.random(len(user)) * self.preferred[user]).astype(np.int64)
        return np.where(rng.random(len(user)) < progress, self.late[user, slot],
                        self.early[user, slot])


def _interactions(seed: int, catalogue: _Catalogue, n_interactions: int, n_users: int):
    """Yields the interactions as tables, one per block of users, rows by user then time."""
    users = _Users(np.random.default_rng([seed, 1]), catalogue, n_interactions, n_users)
    contexts = pa.array(_context_vocabulary(catalogue.topic_names))
    for block, (lo, hi) in enumerate(users.blocks()):
        rng = np.random.default_rng([seed, 2, block])
        counts = users.counts[lo:hi]
        user = np.repeat(np.arange(lo, hi), counts)
        n = len(user)
        first = users.offsets[lo:hi] - users.offsets[lo]  # each user's first row
        position = np.arange(n) - np.repeat(first, counts)
        progress = position / np.maximum(users.counts[user] - 1, 1)

        topic = np.where(rng.random(n) < EXPLORATION,
                         rng.choice(catalogue.topics, size=n, p=catalogue.topic_probs),
                         users.liked_topic(rng, user, progress))
        item = catalogue.draw(rng, topic)
        for attempt in range(6):
            repeat = _repeats(user, item)
            if not repeat.any():
                break
            if attempt >= 3:  # the user may have used the topic up
                topic[repeat] = rng.integers(catalogue.topics, size=int(repeat.sum()))
            item[repeat] = catalogue.draw(rng, topic[repeat], uniform=True)

        # Increasing times per user: cumulated random gaps, scaled to the user's span.
        gaps = rng.exponential(size=n)
        total = np.cumsum(gaps)
        begin = np.repeat(total[first] - gaps[first], counts)
        end = np.repeat(total[first + counts - 1], counts)
        timestamp = (users.first_time[user]
                     + (total - begin) / (end - begin) * users.duration[user]).astype(np.int64)
        context = _context_code(rng, timestamp, users.liked_topic(rng, user, progress),
                                catalogue.topics)
        yield pa.table({"user_id": users.ids.take(pa.array(user)),
                        "item_id": catalogue.item_ids.take(pa.array(item)),
                        "timestamp": pa.array(timestamp),
                        "context_text": contexts.take(pa.array(context))})


def _repeats(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """True for every (user, item) pair seen earlier in the arrays."""
    key = user * (int(item.max()) + 1) + item
    order = np.argsort(key, kind="stable")
    repeat = np.zeros(len(key), bool)
    repeat[order[1:][key[order[1:]] == key[order[:-1]]]] = True
    return repeat


def _time_words() -> list:
    return [f"{day} {part}" for day in ("weekday", "weekend") for part in DAY_PARTS]


def _context_vocabulary(topic_names) -> list:
    """Every context text, in the order of `_context_code`."""
    times = _time_words()
    return ([f"{template.format(name)}, {time}" for template in TOPIC_TEMPLATES
             for name in topic_names for time in times]
            + [f"{phrase}, {time}" for phrase in GENERIC_CONTEXTS for time in times])


def _context_code(rng, timestamp: np.ndarray, topic: np.ndarray, topics: int) -> np.ndarray:
    day = timestamp // 86_400
    weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    part = np.searchsorted([6, 12, 18, 23], timestamp % 86_400 // 3_600, side="right") % 4
    time = weekend * len(DAY_PARTS) + part
    n, per_phrase = len(timestamp), len(_time_words())
    named = (rng.integers(len(TOPIC_TEMPLATES), size=n) * topics + topic) * per_phrase + time
    generic = ((len(TOPIC_TEMPLATES) * topics + rng.integers(len(GENERIC_CONTEXTS), size=n))
               * per_phrase + time)
    return np.where(rng.random(n) < TOPIC_CONTEXT, named, generic)

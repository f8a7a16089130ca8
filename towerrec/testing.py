"""Helpers for tests and benchmarks: a tiny random BERT, MovieLens as CSV files with its
latest period set apart as new data. No production module imports this one
(scripts/check_imports.py checks)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from towerrec.data.dataset import Dataset


def tiny_bert(vocabulary: List[str], sequence_length: int = 32, seed: int = 0):
    """A 2-layer random BERT and its preprocessor, for fast tests."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    preprocessor = keras_hub.models.BertTextEmbedderPreprocessor(
        tokenizer, sequence_length=sequence_length)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=sequence_length)
    return backbone, preprocessor


def write_time_split(dataset: Dataset, folder: Path, new_fraction: float = 0.1) -> Dict[str, Path]:
    """MovieLens as the generic CSV schema, its latest `new_fraction` of interactions (in
    time) set apart as new data: {"interactions", "items", "new_interactions",
    "new_items"} paths. Items first seen in the new period are the new items. For retrain
    demos, tests and benchmarks; `csv_config_values` gives the matching config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions.sort_values("timestamp", kind="stable")
    cut = inter["timestamp"].quantile(1 - new_fraction)
    old, new = inter[inter["timestamp"] < cut], inter[inter["timestamp"] >= cut]
    items = dataset.items.copy()
    # title + ". " + genre words is the item text (join_text joins text columns so).
    items["genre_text"] = [text[len(title) + 2:] for title, text in
                           zip(items["title"], items["text"])]
    is_new = ~items["item_id"].isin(old["item_id"]) & items["item_id"].isin(new["item_id"])
    paths = {name: folder / f"{name}.csv" for name in
             ("interactions", "items", "new_interactions", "new_items")}
    old.to_csv(paths["interactions"], index=False)
    new.to_csv(paths["new_interactions"], index=False)
    columns = ["item_id", "title", "genre_text", "genres", "year"]
    items.loc[~is_new, columns].to_csv(paths["items"], index=False)
    items.loc[is_new, columns].to_csv(paths["new_items"], index=False)
    return paths


def csv_config_values(paths: Dict[str, Path]) -> Dict[str, object]:
    """Config overrides (dotted keys) that read `write_time_split`'s files."""
    return {"data.source": "csv", "data.interactions": str(paths["interactions"]),
            "data.items": str(paths["items"]), "data.rating_column": "rating",
            "data.context_column": "context_text",
            "data.text_columns": ["title", "genre_text"],
            "data.categorical_columns": ["genres"], "data.numeric_columns": ["year"]}

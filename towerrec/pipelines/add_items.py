"""`towerrec add-items items.csv`: new items become retrievable without retraining.

The candidate tower embeds a new item from its text and attributes (its id is unknown to
the model, as for any cold item); the item joins the run's catalogue, the index is rebuilt,
and, given a model base path, new versions of the exports are published. With a base path,
the run is the newest of the config's and the one behind the served models (a retrain's
generation), so that adding items never publishes an older model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import pandas as pd

from towerrec.pipelines.config import Config
from towerrec.pipelines.data import ADDED_ITEMS, DataError, items_frame, load_dataset, read_table


def read_new_items(path: str, config: Config, catalogue_ids) -> pd.DataFrame:
    """A CSV/Parquet of new items, in the columns the config's source declares, checked
    against the catalogue (`catalogue_ids`): no repeated or existing ids, every item a text."""
    raw = read_table(path, "new items")
    if config.data.source == "movielens-100k":
        from towerrec.pipelines.movielens import ITEM_COLUMNS, movielens_items
        missing = [c for c in ITEM_COLUMNS if c not in raw.columns]
        if missing:
            raise DataError(f"new items file {path} is missing column(s) {missing}; "
                            f"MovieLens items need {ITEM_COLUMNS}")
        new = movielens_items(raw)
    else:
        new = items_frame(raw, config.data, path)
    if new["item_id"].duplicated().any():
        raise DataError(f"new items file {path} repeats item_id "
                        f"{new['item_id'][new['item_id'].duplicated()].iloc[0]!r}")
    clash = sorted(set(new["item_id"]) & set(catalogue_ids))
    if clash:
        raise DataError(f"new items file {path}: item_id(s) already in the catalogue: "
                        f"{clash[:5]}")
    if (new["text"].str.len() == 0).any():
        raise DataError(f"new items file {path}: every new item needs a text")
    return new


def add_items(config: Config, path: str, model_base_path: Optional[Path] = None) -> Dict:
    """Adds the items of `path`; returns {"items": frame, "index": settings, "exports": ...}."""
    from towerrec.pipelines.publish import exclusive, latest_run_config

    if model_base_path is None:
        return _add_items(config, path, None)
    base_path = Path(model_base_path)
    with exclusive(base_path):  # the served run must not move meanwhile
        return _add_items(latest_run_config(config, base_path), path, base_path)


def _add_items(config: Config, path: str, model_base_path: Optional[Path]) -> Dict:
    from towerrec.pipelines.evaluate import candidate_embeddings
    from towerrec.pipelines.export import export_models
    from towerrec.pipelines.index import INDEX_DIR, build_index
    from towerrec.pipelines.train import load_run

    new = read_new_items(path, config, load_dataset(config).items["item_id"])
    run_path = config.run_path
    added = run_path / ADDED_ITEMS
    previous = pd.read_parquet(added) if added.exists() else None
    tmp = added.with_suffix(".tmp")
    pd.concat([previous, new] if previous is not None else [new],
              ignore_index=True).to_parquet(tmp, index=False)
    tmp.replace(added)
    try:  # the model must take the new items before anything is published
        run = load_run(config)
        embeddings = candidate_embeddings(run)
    except Exception:
        if previous is None:
            added.unlink()
        else:
            previous.to_parquet(added, index=False)
        raise
    index = build_index(embeddings, run.catalogue["item_id"], run_path / INDEX_DIR)
    exports = export_models(run, model_base_path) if model_base_path else {}
    return {"items": new, "index": index, "exports": exports, "run": run}

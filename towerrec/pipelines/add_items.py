"""`towerrec add-items items.csv`: new items become retrievable without retraining.

The candidate tower embeds a new item from its text and attributes (its id is unknown to
the model, as for any cold item); the item joins the run's catalogue, the index is rebuilt,
and, given a model base path, new versions of the exports are published. With a base path,
the run is the newest of the config's and the one behind the served models (a retrain's
generation), so that adding items never publishes an older model.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Optional

from towerrec.config import Config
from towerrec.data.dataset import ADDED_ITEMS, MAX_TEXT_CHARS, DataError, read_table
from towerrec.data.sources import catalogue_items, load_dataset

import pandas as pd


def read_new_items(path: str, config: Config, catalogue_ids,
                   added: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """A CSV/Parquet of new items, in the columns the config's source declares, checked:
    no unknown, missing or repeated columns or ids, no empty id or title, numbers that are
    numbers. An id of the training catalogue (`catalogue_ids`) is refused; one already in
    `added` (an earlier add-items) is refused unless its row is the same, which makes
    running add-items again after a kill a resume. Returns the items not added before."""
    new = catalogue_items(read_table(path, "new items"), config, path)
    if new["item_id"].duplicated().any():
        raise DataError(f"new items file {path} repeats item_id "
                        f"{new['item_id'][new['item_id'].duplicated()].iloc[0]!r}")
    clash = sorted(set(new["item_id"]) & set(catalogue_ids))
    if clash:
        raise DataError(f"new items file {path}: item_id(s) already in the catalogue: "
                        f"{clash[:5]}")
    if added is not None and len(added):
        before = added.set_index("item_id")
        again = new[new["item_id"].isin(before.index)]
        changed = [i for i, row in again.set_index("item_id").iterrows()
                   if not _same_row(row, before.loc[i])]
        if changed:
            raise DataError(f"new items file {path}: item_id(s) added before with other "
                            f"values: {changed[:5]}")
        new = new[~new["item_id"].isin(before.index)].reset_index(drop=True)
        new.attrs["resumed"] = len(again)  # added already by an add-items cut short
    return new


def _same_row(new: pd.Series, old: pd.Series) -> bool:
    """An item as read now and as an earlier add-items stored it. Columns the earlier
    version did not store (e.g. `title`) are not compared, and its texts are compared as
    far as texts are read now (MAX_TEXT_CHARS)."""
    def same(a, b) -> bool:
        if isinstance(a, str) and isinstance(b, str):
            return a == b[:MAX_TEXT_CHARS].strip() or a == b
        return a == b or bool(pd.isna(a) and pd.isna(b))
    return all(same(new[k], old[k]) for k in new.index if k in old.index)


@dataclasses.dataclass
class AddedItems:
    """What add-items did: the items it added (with `resumed` of them added by an earlier,
    unfinished run), the rebuilt index's settings, the versions published, and the run."""
    items: pd.DataFrame
    resumed: int
    index: Dict[str, Any]
    exports: Dict[str, Path]
    run: Any


def add_items(config: Config, path: str,
              model_base_path: Optional[Path] = None) -> AddedItems:
    """Adds the items of `path`. Running it again with the same file after a kill finishes
    what the first run began."""
    from towerrec.export.publish import exclusive, latest_run_config, run_lock

    if model_base_path is None:
        with run_lock(config.run_path):
            return _add_items(config, path, None)
    base_path = Path(model_base_path)
    with exclusive(base_path):  # the served run must not move meanwhile
        config = latest_run_config(config, base_path)
        with run_lock(config.run_path):
            return _add_items(config, path, base_path)


def _add_items(config: Config, path: str, model_base_path: Optional[Path]) -> AddedItems:
    from towerrec.evaluation.evaluate import candidate_embeddings
    from towerrec.export.export import index_and_export
    from towerrec.training.run import load_run

    added = config.run_path / ADDED_ITEMS
    previous = pd.read_parquet(added) if added.exists() else None
    catalogue = load_dataset(config).items["item_id"]
    if previous is not None:  # the training catalogue, without the items added since
        catalogue = catalogue[~catalogue.isin(previous["item_id"])]
    new = read_new_items(path, config, catalogue, previous)
    resumed = new.attrs.get("resumed", 0)
    if len(new):
        tmp = added.with_name(f"{added.name}.tmp-{os.getpid()}")
        pd.concat([previous, new] if previous is not None else [new],
                  ignore_index=True).to_parquet(tmp, index=False)
        tmp.replace(added)
    try:  # the model must take the new items before anything is published
        run = load_run(config)
        embeddings = candidate_embeddings(run)
    except Exception:
        if len(new):
            if previous is None:
                added.unlink()
            else:
                previous.to_parquet(added, index=False)
        raise
    # Not a transaction: a kill from here on leaves the items in the run and perhaps not
    # in the served models; the same add-items again (a resume, see read_new_items)
    # rebuilds the index and publishes.
    built = index_and_export(run, embeddings, model_base_path)
    return AddedItems(new, resumed, built.index, built.exports, run)

"""`towerrec embed-catalogue`: the catalogue's candidate embeddings on Apache Beam.

    items files -> catalogue rows -> RunInference(the exported candidate_tower)
      -> embedding shards (Parquet: item_id, candidate_embedding) -> index and exports

Embedding the catalogue is the part of `towerrec index` that grows with the catalogue: every
item's text runs through BERT. Here it runs on any Beam runner (DirectRunner here; Dataflow,
Flink or Spark on a cluster), each worker loading the exported `candidate_tower` SavedModel,
which holds the text encoder, once. The items are read in the columns the config's source
declares, with the same checks as the run's own (towerrec.data.sources.catalogue_items),
from files on any filesystem Beam reads (a glob: one file is read by one worker, so shard a
large catalogue into several). A last step in this process reads the shards back, checks
that they hold exactly the run's catalogue, and builds what `towerrec index` builds (and,
with a model base path, new versions of the exports), from these embeddings.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from towerrec.config import Config
from towerrec.data.dataset import DataError
from towerrec.data.sources import catalogue_items

import numpy as np
import pandas as pd

EMBEDDINGS_DIR = "catalogue_embeddings"
SHARD_PREFIX = "part"
EMBEDDING = "candidate_embedding"  # the candidate_tower export's output
MAX_BATCH = 256


def read_items(readable_file, config: Config) -> Iterator[Dict]:
    """A file of items (a Beam ReadableFile: CSV, or Parquet by extension) -> one dict per
    item of what the candidate_tower signature reads."""
    path = readable_file.metadata.path
    with readable_file.open() as f:
        data = f.read()
    if path.endswith((".parquet", ".pq")):
        raw = pd.read_parquet(io.BytesIO(data))
    else:  # text, typed as the run's own reader types it
        raw = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    items = catalogue_items(raw, config, path)
    # The attributes as the source declares them (MovieLens: genres, year); the handler
    # feeds the signature the ones it names.
    attributes = {c: pd.api.types.is_numeric_dtype(items[c]) for c in items.columns
                  if c not in ("item_id", "text", "title")}
    for row in items.itertuples(index=False):
        values = row._asdict()
        yield {"item_id": str(values["item_id"]), "item_text": str(values["text"]),
               **{c: np.float32(values[c]) if numeric else str(values[c])
                  for c, numeric in attributes.items()}}


def candidate_tower_handler(model_dir: str):
    """A RunInference model handler (Beam's TensorFlow one) over the exported
    candidate_tower: it loads the SavedModel itself (Beam's default loads Keras models) and
    feeds a batch of item dicts to the serving signature."""
    from apache_beam.ml.inference.base import PredictionResult
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

    def embed(model, batch: Sequence[Dict], inference_args=None, model_id=None):
        import tensorflow as tf

        signature = model.signatures["serving_default"]
        specs = signature.structured_input_signature[1]
        inputs = {name: tf.constant([item[name] for item in batch], spec.dtype)
                  for name, spec in specs.items()}
        vectors = signature(**inputs)[EMBEDDING].numpy()
        return [PredictionResult(item, vector, model_id) for item, vector in zip(batch, vectors)]

    class CandidateTowerHandler(TFModelHandlerTensor):
        def load_model(self):
            import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)

            import tensorflow as tf
            import tensorflow_text  # noqa: F401  (the tokenizer's ops)

            return tf.saved_model.load(model_dir)

    return CandidateTowerHandler(model_dir, inference_fn=embed, max_batch_size=MAX_BATCH)


def embed_catalogue(config: Config, items: str, model_dir: Path, output: Path,
                    beam_args: Optional[List[str]] = None) -> int:
    """Runs the Beam pipeline: `items` (a glob) embedded by the candidate_tower SavedModel
    in `model_dir`, written as Parquet shards under `output`. Returns the shards' count."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.io import fileio
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob(f"{SHARD_PREFIX}-*"):
        old.unlink()  # shards of an earlier run would be read back with these
    schema = pa.schema([("item_id", pa.string()), (EMBEDDING, pa.list_(pa.float32()))])
    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
        _ = (pipeline
             | "match items" >> fileio.MatchFiles(items)
             | "open" >> fileio.ReadMatches()
             | "read items" >> beam.FlatMap(read_items, config)
             # Spread the items over the workers: a file is read by one worker.
             | "spread" >> beam.Reshuffle()
             | "embed" >> RunInference(candidate_tower_handler(str(model_dir)))
             | "to rows" >> beam.Map(lambda result: {
                 "item_id": result.example["item_id"],
                 EMBEDDING: np.asarray(result.inference, np.float32).tolist()})
             | "write shards" >> beam.io.WriteToParquet(
                 str(output / SHARD_PREFIX), schema, file_name_suffix=".parquet"))
    return len(list(output.glob(f"{SHARD_PREFIX}-*")))


def read_embeddings(output: Path, catalogue_ids) -> np.ndarray:
    """The shards under `output` -> float32 [catalogue, d] in the order of `catalogue_ids`;
    a DataError unless they hold each catalogue item exactly once."""
    shards = sorted(Path(output).glob(f"{SHARD_PREFIX}-*"))
    if not shards:
        raise DataError(f"no embedding shards in {output}")
    frame = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    repeated = frame["item_id"][frame["item_id"].duplicated()]
    if len(repeated):
        raise DataError(f"the shards in {output} embed item_id {repeated.iloc[0]!r} twice")
    ids = pd.Index(frame["item_id"])
    catalogue = pd.Index([str(i) for i in catalogue_ids])
    missing, unknown = catalogue.difference(ids), ids.difference(catalogue)
    if len(missing) or len(unknown):
        raise DataError(
            f"the embedded items are not the run's catalogue: {len(missing)} catalogue "
            f"item(s) missing (e.g. {list(missing[:3])}), {len(unknown)} not in it (e.g. "
            f"{list(unknown[:3])}; new items join with `towerrec add-items`)")
    rows = ids.get_indexer(catalogue)
    return np.stack(frame[EMBEDDING].to_numpy()[rows]).astype(np.float32)


def index_from_embeddings(run, embeddings: np.ndarray,
                          model_base_path: Optional[Path] = None) -> Dict:
    """What `towerrec index` (and, given a base path, `towerrec export`) build, from
    candidate embeddings [catalogue, d] computed elsewhere."""
    from towerrec.export.export import export_models
    from towerrec.export.index import INDEX_DIR, build_index
    from towerrec.training.prior import served_candidates
    from towerrec.training.train import check_finite

    embeddings = check_finite(embeddings, "catalogue embeddings")
    index = build_index(served_candidates(run, embeddings), run.catalogue["item_id"],
                        run.config.run_path / INDEX_DIR)
    exports = (export_models(run, model_base_path, candidate_embeddings=embeddings)
               if model_base_path else {})
    return {"index": index, "exports": exports}

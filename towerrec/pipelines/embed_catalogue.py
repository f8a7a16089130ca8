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
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

from towerrec.config import Config, ConfigError
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

    def embed(model, batch: Sequence[Any], inference_args: Dict[str, Any],
              model_id: Optional[str] = None) -> Iterable[PredictionResult]:
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


def _shards(output: str) -> List[str]:
    from apache_beam.io.filesystems import FileSystems

    pattern = FileSystems.join(output, f"{SHARD_PREFIX}-*")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def embed_catalogue(config: Config, items: str, model_dir: str, output: str,
                    beam_args: Optional[List[str]] = None) -> int:
    """Runs the Beam pipeline: `items` (a glob) embedded by the candidate_tower SavedModel
    in `model_dir`, written as Parquet shards under `output` (both on any filesystem Beam
    reads: on a cluster, storage every worker reaches). Returns the shards' count; a
    DataError naming the first failure when the pipeline fails."""
    try:
        import apache_beam as beam
    except ImportError:
        raise ConfigError("embed-catalogue needs Apache Beam: pip install 'towerrec[beam]' "
                          "(make setup installs it)") from None
    import pyarrow as pa
    from apache_beam.io import fileio
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    old = _shards(output)
    if old:  # shards of an earlier run would be read back with these
        FileSystems.delete(old)
    schema = pa.schema([("item_id", pa.string()), (EMBEDDING, pa.list_(pa.float32()))])
    try:
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
            _ = (pipeline
                 | "match items" >> fileio.MatchFiles(items)
                 | "open" >> fileio.ReadMatches()
                 | "read items" >> beam.FlatMap(read_items, config)
                 # Spread the items over the workers: a file is read by one worker.
                 | "spread" >> beam.Reshuffle()
                 | "embed" >> RunInference(candidate_tower_handler(model_dir))
                 | "to rows" >> beam.Map(lambda result: {
                     "item_id": result.example["item_id"],
                     EMBEDDING: np.asarray(result.inference, np.float32).tolist()})
                 | "write shards" >> beam.io.WriteToParquet(
                     FileSystems.join(output, SHARD_PREFIX), schema,
                     file_name_suffix=".parquet"))
    except Exception as e:  # a worker's error comes back wrapped in the runner's
        raise DataError(f"the Beam pipeline failed: {_first_cause(e)}") from None
    return len(_shards(output))


def _first_cause(error: BaseException) -> str:
    """The line of a Beam failure that says what went wrong (a worker's DataError, a file
    not found), without the runner's stack traces."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("DataError: ", "FileNotFoundError: ", "Error: "):
        for line in lines:
            if marker in line:
                return line.split(marker, 1)[1][:500]
    return (lines[-1] if lines else type(error).__name__)[:500]


def read_embeddings(output: str, catalogue_ids) -> np.ndarray:
    """The shards under `output` -> float32 [catalogue, d] in the order of `catalogue_ids`;
    a DataError unless they hold each catalogue item exactly once."""
    from apache_beam.io.filesystems import FileSystems

    shards = _shards(output)
    if not shards:
        raise DataError(f"no embedding shards in {output}")
    frame = pd.concat([pd.read_parquet(io.BytesIO(FileSystems.open(s).read()))
                       for s in shards], ignore_index=True)
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

"""Cross-replica negatives: every replica's queries score against the whole global batch.

In-batch softmax takes a query's negatives from the candidates of its batch. Under a
strategy with several replicas (GPUs, TPU cores, workers), a replica holds only its slice
of the global batch, so a global batch of B over R replicas trains each query against B/R - 1
negatives instead of B - 1, and recall falls behind one device's (TFRS issues #274, #710).
`global_batch` all-gathers the candidate side, so each replica's softmax is the one a single
device would compute over the global batch for the same queries.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import towerrec  # noqa: F401  (the Keras 2 switch, before TensorFlow)

import tensorflow as tf


def global_batch(tensors: Sequence[Optional[tf.Tensor]]) -> Tuple[Optional[tf.Tensor], ...]:
    """Per-replica tensors [local_batch, ...] (None passes through) -> the global batch's
    [replicas * local_batch, ...], this replica's own rows first and the others after, in
    replica order from the next one on.

    Own rows first keeps the positives where in-batch softmax expects them (query i's
    positive is candidate i). all_gather has a gradient: a candidate's gradient from every
    replica's loss flows back to the replica that computed it. With one replica (or outside
    a strategy) the tensors are returned as they are.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tuple(tensors)
    # MultiWorkerMirroredStrategy with one device a worker leaves a replica's ops unplaced,
    # and all_gather needs its inputs on a device ("destinations can not be empty").
    local = context.strategy.extended.worker_devices
    device = local[0] if len(local) == 1 else None

    def gather(x):
        if x is None:
            return None
        with tf.device(device):
            everything = context.all_gather(tf.identity(x), axis=0)
        rows = tf.shape(everything, out_type=tf.int32)[0]
        local_rows = tf.shape(x, out_type=tf.int32)[0]
        # The offset below holds only for equal shares: training splits its batches evenly
        # and drops the last one, so this guards other callers (a partial last batch).
        tf.debugging.assert_equal(
            rows, local_rows * context.num_replicas_in_sync,
            message="global negatives need the same batch size on every replica")
        offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * local_rows
        return _permuted(everything, (tf.range(rows) + offset) % rows,
                         (tf.range(rows) - offset) % rows)

    return tuple(gather(x) for x in tensors)


@tf.custom_gradient
def _permuted(x, order, inverse):
    """x [rows, ...] -> x[order], exactly (no matmul: TF32 on GPUs and TPUs' matmuls would
    round it), with a dense gradient dy[inverse] (all_gather's gradient takes dense
    tensors only; tf.gather's own is sparse). `inverse` undoes `order`. Not tf.roll: XLA
    needs its shift at compile time, and a TPU's replica id is a tensor."""
    def gradient(dy):
        return tf.gather(dy, inverse), None, None
    return tf.gather(x, order), gradient

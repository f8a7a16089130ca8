"""towerrec serving: the TensorFlow Serving API (gRPC PredictionService and ModelService, the
REST API, batching, hot reload, Prometheus metrics) over the `models/<name>/<version>/` folders
that `towerrec export` writes, so that one export runs here and in `tensorflow/serving`.

`towerrec.serving.server.serve` starts a server in-process;
`towerrec.serving.client.RecommenderClient` talks to this server or to TF Serving. This
package does not import towerrec's training code.
"""

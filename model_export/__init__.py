"""Training side: data splits, table building, the torch model, training, ONNX export, evaluation, the
offline study and baselines. Imports `unirank.core`; never the service."""

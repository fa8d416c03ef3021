"""What training and serving share, torch-free (numpy and pyarrow only): the event schema, text
normalisation, the title index, the unified context, the history, the feature tables and encoder, the
text-feature projection and the model spec. The service and `model_export` both import from here;
nothing here imports either (`make lint` checks it)."""

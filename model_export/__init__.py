"""Training-side package: data, features, model, training, evaluation and ONNX export.

Modules that the service imports too (schema, text, context, lexical, tables, features) use numpy and
pyarrow only; torch is imported only by model, train and export.
"""

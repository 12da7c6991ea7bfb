"""I/O at the edges of the pipeline: dataset files, the artifact store (local or S3),
the MLflow registry, and TL2cgen compilation. Stage logic (``core``, ``preprocess``,
``train``, ``evaluate``) takes what these return and never does I/O itself."""

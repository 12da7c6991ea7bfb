"""`slocast up`: broker, S3, MLflow and every pipeline service supervised on one machine."""

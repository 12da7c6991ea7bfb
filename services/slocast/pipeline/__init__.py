"""The stages as long-running Kafka services (preprocess, trainers, evaluator, prediction listener).

Each service is a thin adapter: it reads events, calls the same stage functions as the
embedded runner (:mod:`slocast.runtime.inprocess`), makes the effects durable (object
store, MLflow), publishes the next event and only then commits its Kafka offset.
"""

"""The compiler side: ONNX → Relax → passes → tuning → build → artifact, tracked in MLflow.

Jobs (each a typed function that tests call directly, and a ``python -m`` command):

* :func:`compile.job.run_compile` — ``python -m compile``
"""

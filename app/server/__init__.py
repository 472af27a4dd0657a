"""The server's side of a horizontal federation, from run config to final model.

- ``federation``: build, resume, run the rounds, finalize (``ServerApp.main``)
- ``runner``: the round loop (bounded sampling waits, per-phase timeouts, hooks)
- ``averaging``: the model-ema average of the global model
- ``checkpoints``: per-round checkpoints and ``resume-from``
- ``outputs``: the run's folder (run_config.json, history.json, final_model.pt)
- ``history``: history.json as typed records, its one writer and one reader
- ``report``: report.html and its plots, from the run's history
- ``tensorboard``: optional TensorBoard event files
- ``mlflow_tracking``: optional MLflow tracking (server side only)
- ``queries``: ask every connected hospital one ``query.*`` question
"""

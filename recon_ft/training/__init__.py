"""The training harness: the LightningModule, its optimizer settings, callbacks, validation,
loggers, the checks run before anything is built, and the run's summary (train.py)."""

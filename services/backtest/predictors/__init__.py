"""Predictors: baselines computed here, the inference service, OpenAI-compatible endpoints and
a local transformers/peft model. Each turns ``EvalRows`` into one ``PredictionSet``."""

"""Turn the config's predictor specs into predictor objects."""

from __future__ import annotations

from datetime import datetime

from services.backtest.predictors.base import Predictor
from services.backtest.predictors.baselines import BaselinePredictor
from services.backtest.predictors.local import LocalPredictor
from services.backtest.predictors.openai_compat import OpenAIPredictor
from services.backtest.predictors.outbound import openai_endpoint, service_endpoint
from services.backtest.predictors.service import ServicePredictor
from services.backtest.schemas import BaselineSpec, LocalSpec, OpenAISpec, ServiceSpec, predictor_label
from services.backtest.settings import BacktestSettings


def build_predictor(
    spec: BaselineSpec | ServiceSpec | OpenAISpec | LocalSpec,
    settings: BacktestSettings,
    seed: int,
    majority_before: datetime | None,
) -> Predictor:
    name = predictor_label(spec)
    url = settings.resolved_database_url
    if isinstance(spec, BaselineSpec):
        return BaselinePredictor(name, url, seed=seed, majority_before=majority_before)
    if isinstance(spec, ServiceSpec):
        inference_url, token = service_endpoint(spec, settings)
        return ServicePredictor(
            name,
            spec.adapter,
            inference_url,
            url,
            api_token=token,
            batch_size=settings.predict_batch_size,
            timeout_seconds=settings.request_timeout_seconds,
            retries=settings.request_retries,
        )
    if isinstance(spec, OpenAISpec):
        base_url, key_env = openai_endpoint(spec, settings)
        return OpenAIPredictor(name, spec.model, base_url, key_env, spec.max_concurrency)
    return LocalPredictor(name, spec.model, spec.adapter_dir, spec.batch_size)

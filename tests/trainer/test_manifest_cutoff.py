"""The manifest records the base model's knowledge cutoff (issue 15): the table's, or the job's."""

from __future__ import annotations

from pathlib import Path

from services.common.adapters import manifest_of
from services.common.db import session_scope
from services.common.db.models import Adapter
from services.common.schemas import AdapterManifest
from services.trainer.settings import TrainerSettings
from tests.trainer.conftest import lora_config


def test_the_tiny_base_is_recorded_as_having_read_nothing(
    published_lora, session_trainer_settings: TrainerSettings
) -> None:  # type: ignore[no-untyped-def]
    manifest = AdapterManifest.model_validate_json((published_lora.path / "manifest.json").read_text())
    assert manifest.base_model_cutoff is not None and manifest.base_model_cutoff.status == "none"
    with session_scope(session_trainer_settings.resolved_database_url) as session:
        row = session.query(Adapter).filter(Adapter.name == "planted-lora").one()
        assert manifest_of(row).base_model_cutoff == manifest.base_model_cutoff


def test_a_job_field_is_what_the_manifest_records(
    session_trainer_settings: TrainerSettings, planted_file: Path, tiny_model_dir: Path
) -> None:
    from services.trainer.training import train

    cutoff = {"pretraining": "2018-06", "tuning": "2019-01-15", "source": "stated by the job"}
    config = lora_config(
        planted_file, tiny_model_dir, name="cutoff-lora", base_model_cutoff=cutoff, optim={"max_steps": 2}
    )
    recorded = train(config, session_trainer_settings).manifest.base_model_cutoff
    assert recorded is not None and recorded.status == "known" and recorded.source == "stated by the job"
    assert (
        recorded.pretraining_stated == "2018-06"
        and recorded.latest.isoformat() == "2019-01-16T00:00:00+00:00"
    )

"""`lcmsr:finetune` ("Fine-tune a model on your imagery") runs the backend's fine-tuning on real pixels,
continues a cancelled run when run again, and shows the backend's defaults."""
import os
from pathlib import Path

import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

REPO = Path(__file__).resolve().parents[2]
SAMPLE_HR = REPO / "resources" / "sample" / "neon_hr.tif"


class Feedback(QgsProcessingFeedback):
    def __init__(self, cancel_on_progress=False):
        super().__init__()
        self.texts, self.infos = [], []
        if cancel_on_progress:
            self.progressChanged.connect(lambda value: self.cancel() if value > 0 else None)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)
        super().setProgressText(text)

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)


def run(parameters, feedback=None):
    import processing

    return processing.run("lcmsr:finetune", parameters, feedback=feedback or Feedback())


def _params(tmp_path, model, **extra):
    return dict({"INPUTS": [str(SAMPLE_HR)], "MODEL": model, "ITERATIONS": 2, "PATCH": 64, "BATCH": 1,
                 "LPIPS_WEIGHT": 0.0, "DEVICE": 2, "OUTPUT": str(tmp_path / "mine.safetensors")}, **extra)


def test_finetune_cancel_run_again_continues_and_writes_a_checked_model(provider, tiny_model, tmp_path):
    pytest.importorskip("torch").set_num_threads(1)
    from lcmsr.weights import check_model

    feedback = Feedback(cancel_on_progress=True)
    with pytest.raises(QgsProcessingException, match="cancel"):
        run(_params(tmp_path, tiny_model, ITERATIONS=3), feedback)
    assert list((tmp_path / "mine_checkpoints").glob("step-*.json"))
    assert not (tmp_path / "mine.safetensors").exists()
    feedback = Feedback()
    done = run(_params(tmp_path, tiny_model, ITERATIONS=3), feedback)   # RESUME is on by default
    assert done["STEPS"] == 3 and done["CHECKPOINT"] == str(tmp_path / "mine_checkpoints")
    assert any("resumed from step" in line for line in feedback.infos), feedback.infos
    assert any("left" in text or "done" in text for text in feedback.texts), feedback.texts
    record = check_model(done["OUTPUT"]).training["finetunes"][-1]
    assert record["base_model"] == os.path.basename(tiny_model) and record["steps"] == 3


def test_finetune_model_by_name_and_defaults_from_the_backend(provider, tmp_path):
    from lcmsr.train_options import option, option_default

    algorithm = provider.algorithm("finetune")
    assert algorithm.displayName() == "Fine-tune a model on your imagery"
    for parameter, field in (("PATCH", "patch"), ("BATCH", "batch"), ("SEED", "seed"),
                             ("LPIPS_WEIGHT", "lpips_weight"), ("DECODER_SHARE", "decoder_share")):
        definition = algorithm.parameterDefinition(parameter)
        assert definition.defaultValue() == option_default(field, "finetune"), parameter
        assert definition.minimum() == option(field).metadata["minimum"], parameter
    assert algorithm.parameterDefinition("MINUTES").defaultValue() == 10.0
    with pytest.raises(QgsProcessingException, match="no_such_model.*lcmsr_x4_rgb_small"):
        run(_params(tmp_path, "no_such_model"))
    with pytest.raises(QgsProcessingException, match="one per raster"):
        run(_params(tmp_path, "lcmsr_x4_rgb_small", LR_INPUTS=[str(SAMPLE_HR), str(SAMPLE_HR)]))

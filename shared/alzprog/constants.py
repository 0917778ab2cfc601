"""Names of the disease stages and transitions, spelled once for the whole project."""

from __future__ import annotations

# Folder names of the Kaggle OASIS slice dataset, exact spelling, in order of severity.
STAGES: tuple[str, ...] = (
    "Non Demented",
    "Very mild Dementia",
    "Mild Dementia",
    "Moderate Dementia",
)
STAGE_INDEX: dict[str, int] = {name: i for i, name in enumerate(STAGES)}

# Short slugs used in registered model names and CLI flags.
STAGE_SLUGS: tuple[str, ...] = ("nd", "vmd", "md", "mod")

# One generator per transition: (slug, source stage index, target stage index).
TRANSITIONS: tuple[tuple[str, int, int], ...] = (
    ("nd-vmd", 0, 1),
    ("vmd-md", 1, 2),
    ("md-mod", 2, 3),
)

CLASSIFIER_MODEL_NAME = "alzheimer-stage-classifier"
CLASSIFIER_EXPERIMENT = "Alzheimers_Classifier"
PROGRESSION_EXPERIMENT = "Alzheimers_Progression"
CHAMPION_ALIAS = "champion"
DCGAN_ALIAS = "dcgan"


def progression_model_name(transition: str) -> str:
    """Registered model name of one transition generator, e.g. ``alzheimer-progression-nd-vmd``."""
    return f"alzheimer-progression-{transition}"


def stage_index(stage: str | int) -> int:
    """Accept a stage name, slug or index and return its index 0-3."""
    if isinstance(stage, int):
        if 0 <= stage < len(STAGES):
            return stage
        raise ValueError(f"stage index out of range: {stage}")
    s = stage.strip()
    if s.isdigit():
        return stage_index(int(s))
    if s in STAGE_INDEX:
        return STAGE_INDEX[s]
    lowered = {name.lower(): i for i, name in enumerate(STAGES)}
    if s.lower() in lowered:
        return lowered[s.lower()]
    if s.lower() in STAGE_SLUGS:
        return STAGE_SLUGS.index(s.lower())
    raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)} or {', '.join(STAGE_SLUGS)}")

from .classification import ClassificationTask, CuePlan, TaskConfig, score_verbalizers

__all__ = ["ClassificationTask", "CuePlan", "TaskConfig", "score_verbalizers"]

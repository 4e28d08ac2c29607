from .classification import ClassificationConfig, ClassificationTask, CuePlan, score_verbalizers
from .generation import GenerationConfig, GenerationTask
from .math import MathConfig
from .summarization import SummarizationConfig

TASK_CONFIGS = {"classification": ClassificationConfig, "math": MathConfig, "summarization": SummarizationConfig}

__all__ = ["TASK_CONFIGS", "ClassificationConfig", "ClassificationTask", "CuePlan", "GenerationConfig",
           "GenerationTask", "MathConfig", "SummarizationConfig", "score_verbalizers"]

from .base import Prediction, RowTruth, Task, TaskConfig
from .classification import ClassificationConfig, ClassificationTask, CuePlan, LabelPrediction, score_verbalizers
from .generation import GenerationConfig, GenerationPrediction, GenerationTask
from .math import MathConfig
from .summarization import SummarizationConfig

# one registry: a new task is a config class (with its Task) added here
TASK_CONFIGS = {"classification": ClassificationConfig, "math": MathConfig, "summarization": SummarizationConfig}

__all__ = ["TASK_CONFIGS", "ClassificationConfig", "ClassificationTask", "CuePlan", "GenerationConfig",
           "GenerationPrediction", "GenerationTask", "LabelPrediction", "MathConfig", "Prediction", "RowTruth",
           "SummarizationConfig", "Task", "TaskConfig", "score_verbalizers"]

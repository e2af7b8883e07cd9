"""Datasets and input pipelines.

A *task* (``data.tasks``) turns ``config.data`` into random-access data sources per
split (TFDS array_record builders read without TensorFlow) and says what the model
needs to know (vocabulary size, number of classes, input kind, length). The
pipeline (``data.pipeline``) reads those sources with grain: deterministic
shuffling, batching, per-process sharding and a checkpointable iterator.
"""
from data.tasks import TASKS, Task, TaskInfo, get_task, register_task

__all__ = ["TASKS", "Task", "TaskInfo", "get_task", "register_task"]

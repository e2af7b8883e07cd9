"""Backbones and heads: a residual stack around any registered mixer."""
from models.backbone import Backbone, ResidualBlock
from models.classifier import SequenceClassifier, build_model, pool

__all__ = ["Backbone", "ResidualBlock", "SequenceClassifier", "build_model", "pool"]

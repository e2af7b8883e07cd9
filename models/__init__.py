"""Backbones and heads: a residual stack around any registered mixer."""
from models.backbone import Backbone, ResidualBlock
from models.classifier import SequenceClassifier, build_model, encode_inputs, pool
from models.lm import CausalLM

__all__ = ["Backbone", "CausalLM", "ResidualBlock", "SequenceClassifier",
           "build_model", "encode_inputs", "pool"]

"""CLIP (OpenAI's ViT checkpoints) with OpenAI's API: ``load``, ``tokenize``, ``encode_image``, ``encode_text``."""

from .clip import (ARCHS, CLIP_URL, CLIP_URL_ENV, MEAN, STD, available_models, checkpoint, is_torchscript, load,
                   load_model, model_url, preprocess_for, read_state_dict)
from .model import CLIP, ClipCheckpointError, ClipConfig, VisionTransformer, build_model, config_from_state_dict
from .tokenizer import ContextLengthError, SimpleTokenizer, tokenize

__all__ = ["ARCHS", "CLIP", "CLIP_URL", "CLIP_URL_ENV", "available_models", "checkpoint", "model_url", "MEAN", "STD",
           "ClipCheckpointError", "ClipConfig", "ContextLengthError",
           "SimpleTokenizer", "VisionTransformer", "build_model", "config_from_state_dict", "is_torchscript",
           "load", "load_model", "preprocess_for", "read_state_dict", "tokenize"]

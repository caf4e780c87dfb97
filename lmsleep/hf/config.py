"""SleepLMConfig: a transformers configuration that carries SleepConfig's fields under the same names.

SleepConfig owns the fields, their defaults and their checks; this class declares them again only in the
form transformers needs (dataclass fields of a PreTrainedConfig), generated from SleepConfig so that a
field added there appears here too. Every value is checked by building the SleepConfig, so a bad value
raises SleepConfig's own message naming the field.
"""
from __future__ import annotations

from dataclasses import asdict, fields

from transformers import PretrainedConfig

from ..config import SleepConfig

MODEL_TYPE = "lmsleep"


class SleepLMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    # transformers turns every PretrainedConfig subclass into a keyword-only dataclass; these are its fields,
    # one per SleepConfig field, with SleepConfig's defaults.
    __annotations__ = {field.name: field.type for field in fields(SleepConfig)}
    locals().update({field.name: field.default for field in fields(SleepConfig)})

    def __post_init__(self, **kwargs):
        # A config.json of another architecture (llama, ...) would otherwise load with lmsleep's defaults.
        model_type = kwargs.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"SleepLMConfig needs a config of model_type {MODEL_TYPE!r}, got one of model_type "
                             f"{model_type!r} (another architecture)")
        self.sleep_config()
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "SleepLMConfig":
        model_type = config_dict.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"this config has model_type {model_type!r}, not {MODEL_TYPE!r}: it is not an lmsleep "
                             "model's config (load it with its own model class, or AutoConfig)")
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_sleep_config(cls, config: SleepConfig, **kwargs) -> "SleepLMConfig":
        if not isinstance(config, SleepConfig):
            raise TypeError(f"config must be an lmsleep.SleepConfig, got {type(config).__name__}")
        return cls(**asdict(config), **kwargs)

    def sleep_config(self) -> SleepConfig:
        """The SleepConfig these fields describe (built, hence checked, on each call: the fields are mutable)."""
        return SleepConfig(**{field.name: getattr(self, field.name) for field in fields(SleepConfig)})

    @property
    def tie_word_embeddings(self) -> bool:
        """transformers' name for SleepConfig.tie_embeddings (it ties the saved weights by it)."""
        return self.tie_embeddings

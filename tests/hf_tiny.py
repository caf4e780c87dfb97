"""Tiny transformers models and a character-level chat tokenizer for tests (no download)."""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHARACTERS = ["<pad>", "<eos>", "<user>", "<bot>", "[UNK]"] + [chr(c) for c in range(32, 127)] + ["\n"]


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, and a chat template: <user>text<eos><bot>."""
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CHARACTERS)}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    model.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>",
                                        additional_special_tokens=["<user>", "<bot>"])
    tokenizer.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}<eos>{% endfor %}"
                               "{% if add_generation_prompt %}<bot>{% endif %}")
    return tokenizer


def llama(vocab_size: int = len(CHARACTERS), layers: int = 2) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, eos_token_id=1, pad_token_id=0)).eval()

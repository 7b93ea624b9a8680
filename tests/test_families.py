"""The VLM families beyond LLaVA (issue #21), on tiny random-weight models of their real transformers classes.

SmolVLM (`idefics3`) and LLaVA-OneVision (`llava_onevision`): their parts, their prompts, captioning through
GreedyDecoder against generate(), every strategy applied, saved and captioning, and their parameter counts from
the published configs on the meta device.
"""

from __future__ import annotations

import pytest
import torch


FAMILIES = ("idefics3", "llava_onevision")
_TINY_DIRS: dict = {}


@pytest.fixture(scope="module")
def tiny_smolvlm_dir(tmp_path_factory, tiny_tokenizer):
    return _tiny_dir(tmp_path_factory, tiny_tokenizer, "idefics3")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_family_dir(request, tmp_path_factory, tiny_tokenizer):
    return _tiny_dir(tmp_path_factory, tiny_tokenizer, request.param)


def _tiny_dir(tmp_path_factory, tokenizer, architecture):
    from captionlab.models.tiny import save_tiny_llava

    if architecture not in _TINY_DIRS:
        _TINY_DIRS[architecture] = save_tiny_llava(tmp_path_factory.mktemp(architecture), tokenizer,
                                                   architecture=architecture, name=f"tiny-{architecture}", seed=0)
    return _TINY_DIRS[architecture]


def _load(folder):
    from captionlab.models.loading import load_model
    from captionlab.models.registry import get_model_spec

    spec = get_model_spec(folder)
    return spec, load_model(spec, device="cpu")


def test_a_tiny_smolvlm_is_saved_and_loaded_in_hf_format_and_its_family_names_its_parts(tiny_smolvlm_dir,
                                                                                        tiny_tokenizer):
    import transformers

    from captionlab.models.families import family_of
    from captionlab.models.families.smolvlm import SmolVLMFamily
    from captionlab.models.prompting import build_prompt

    spec, loaded = _load(tiny_smolvlm_dir)
    model = loaded.model
    assert spec.architecture == "idefics3" and isinstance(model, transformers.Idefics3ForConditionalGeneration)
    family = family_of(model)
    assert isinstance(family, SmolVLMFamily)
    assert family.language_model(model) is model.model.text_model
    assert family.vision_tower(model) is model.model.vision_model
    assert family.projector(model) is model.model.connector
    assert isinstance(loaded.processor, transformers.Idefics3Processor)
    assert build_prompt(spec).endswith("User:<image>Briefly caption the image<end_of_utterance>\nAssistant:")
    # the shared tokenizer is not changed by the family's image markers; the saved one knows them
    assert "<global-img>" not in tiny_tokenizer.get_vocab()
    assert loaded.tokenizer.convert_tokens_to_ids("<global-img>") != loaded.tokenizer.unk_token_id
    # the full fine-tuning set: the connector and the LLM with its head, never the vision tower
    trained = {id(p) for p in family.full_fine_tuning_parameters(model)}
    assert all(id(p) in trained for p in model.model.connector.parameters())
    assert not any(id(p) in trained for p in model.model.vision_model.parameters())


def test_a_tiny_llava_onevision_is_saved_and_loaded_in_hf_format_and_its_family_names_its_parts(
        tmp_path_factory, tiny_tokenizer):
    import transformers

    from captionlab.models.families import family_of
    from captionlab.models.prompting import build_prompt

    spec, loaded = _load(_tiny_dir(tmp_path_factory, tiny_tokenizer, "llava_onevision"))
    model = loaded.model
    assert isinstance(model, transformers.LlavaOnevisionForConditionalGeneration)
    family = family_of(model)
    assert family.architecture == "llava_onevision"
    assert family.language_model(model) is model.model.language_model
    assert family.projector(model) is model.model.multi_modal_projector
    assert type(family.vision_tower(model)).__name__ == "SiglipVisionModel"
    assert isinstance(loaded.processor, transformers.LlavaOnevisionProcessor)
    assert build_prompt(spec).endswith("<|im_start|>user\n<image>\nBriefly caption the image<|im_end|>\n"
                                       "<|im_start|>assistant\n")
    assert any(p is model.model.image_newline for p in family.full_fine_tuning_parameters(model))


def test_greedy_decoder_gives_generates_greedy_tokens(tiny_family_dir, tiny_images):
    from captionlab.models.decoding import GreedyDecoder
    from captionlab.models.prompting import build_prompt

    from captionlab.models.prompting import language_model

    spec, loaded = _load(tiny_family_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # random weights large enough that the greedy tokens vary from step to step and row to row
        for parameter in language_model(loaded.model).parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.2)
    tokenizer = loaded.tokenizer
    inputs = loaded.processor(images=tiny_images, text=[build_prompt(spec)] * len(tiny_images), return_tensors="pt",
                              padding=True)
    kwargs = dict(max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        expected = loaded.model.generate(**inputs, do_sample=False, num_beams=1, **kwargs)
        found = GreedyDecoder(loaded.model)(dict(inputs), **kwargs)
    expected = expected[:, inputs["input_ids"].shape[1]:]
    assert len(set(expected[0].tolist())) > 1  # not a constant token: the comparison can tell decoders apart
    assert torch.equal(found, expected)


def test_every_paper_strategy_applies_saves_and_captions(tiny_family_dir, tiny_images, tmp_path):
    from captionlab.captioner import GenerationSettings, load_captioners
    from captionlab.strategies import PAPER_STRATEGIES, get_strategy
    from captionlab.strategies.prompt_learning import prompt_token_ids

    spec, _ = _load(tiny_family_dir)
    artifacts = {}
    for name in PAPER_STRATEGIES:
        strategy = get_strategy(name)
        _, loaded = _load(tiny_family_dir)
        model = strategy.apply(loaded.model, spec, loaded.tokenizer)
        trainable = sum(p.numel() for _, p in strategy.trainable_parameters(model))
        assert (trainable == 0) == (name == "zero_shot"), name
        if name == "prompt_learning":  # the template's tokens, not the processor's image wrappers
            hidden = loaded.model.config.text_config.hidden_size
            assert trainable == len(prompt_token_ids(spec, loaded.tokenizer)) * hidden
        if name == "lora":
            adapted = [n for n, _ in model.named_modules() if n.endswith("q_proj.lora_A")]
            llm = "text_model" if spec.architecture == "idefics3" else "language_model"
            assert adapted and all(llm in n for n in adapted)  # the LLM's, never the vision tower's
        artifacts[name] = None if name == "zero_shot" else tmp_path / name
        if artifacts[name] is not None:
            strategy.save(model, artifacts[name])
    captioners = load_captioners(spec, artifacts, GenerationSettings(max_new_tokens=4, batch_size=2), device="cpu")
    assert set(captioners) == set(PAPER_STRATEGIES)
    for name, captioner in captioners.items():
        captions = captioner.caption(tiny_images)
        assert len(captions) == len(tiny_images) and all(isinstance(c, str) for c in captions), name


def _lora_count_from_config(spec) -> int:
    text = spec.config["text_config"]
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    kv = text["num_key_value_heads"] * text.get("head_dim", hidden // heads)
    per_layer = 2 * (hidden + hidden) + 2 * (hidden + kv) + 3 * (hidden + text["intermediate_size"])  # q o, k v, mlp
    return spec.lora["r"] * per_layer * text["num_hidden_layers"]


@pytest.mark.parametrize("name, low, high", [("smolvlm-256m", 250e6, 260e6), ("llava-onevision-0.5b", 0.89e9, 0.90e9)])
def test_counts_follow_from_the_published_configs(name, low, high):
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies.counting import count_trainable, uncounted

    spec = get_model_spec(name)
    counts = count_trainable(name)
    assert low < counts["total"] < high  # the size the model is published with ("256M", "0.9B")
    assert counts["lora"] == _lora_count_from_config(spec)
    text = spec.config["text_config"]
    assert counts["prefix_tuning"] == text["hidden_size"] * text["num_hidden_layers"]
    assert "prompt_learning" not in counts and "tokenizer" in uncounted(counts)["prompt_learning"]


@pytest.mark.parametrize("name, low, high", [("smolvlm-2.2b", 2.2e9, 2.3e9), ("llava-onevision-7b", 8.0e9, 8.1e9)])
def test_the_larger_models_build_on_the_meta_device_at_their_published_size(name, low, high):
    from captionlab.models.loading import build_random_model
    from captionlab.models.registry import get_model_spec

    model = build_random_model(get_model_spec(name), "meta")
    assert low < sum(p.numel() for p in model.parameters()) < high  # "2.2B" / "8B"


@pytest.mark.parametrize("architecture", FAMILIES)
@pytest.mark.parametrize("name", ["prompt_learning", "prefix_tuning", "lora"])
def test_prefix_shared_training_has_per_caption_loss_and_gradients(tmp_path_factory, tiny_tokenizer, tiny_images,
                                                                   architecture, name):
    """One image's captions after one copy of its image+prompt prefix: the same loss and gradients as one sequence
    per caption (the check of tests/test_prefix_sharing.py), with each family's own image inputs."""
    from test_prefix_sharing import check_packed_equals_per_caption, fresh

    loaded, strategy = fresh(_tiny_dir(tmp_path_factory, tiny_tokenizer, architecture), name)
    packed = check_packed_equals_per_caption(loaded, strategy, tiny_images)
    assert all(key in packed for key in loaded.spec.family.image_input_keys)  # e.g. SmolVLM's pixel_attention_mask

"""The VLM families beyond LLaVA (issue #21), on tiny random-weight models of their real transformers classes.

SmolVLM (`idefics3`): its parts, its prompt, captioning through GreedyDecoder against generate(), every strategy
applied, saved and captioning, and its parameter counts from the published configs on the meta device.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_smolvlm_dir(tmp_path_factory, tiny_tokenizer):
    from captionlab.models.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("idefics3"), tiny_tokenizer, architecture="idefics3",
                           name="tiny-smolvlm", seed=0)


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


def test_smolvlm_greedy_decoder_gives_generates_greedy_tokens(tiny_smolvlm_dir, tiny_images):
    from captionlab.models.decoding import GreedyDecoder
    from captionlab.models.prompting import build_prompt

    spec, loaded = _load(tiny_smolvlm_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # random weights large enough that the greedy tokens vary from step to step and row to row
        for parameter in loaded.model.model.text_model.parameters():
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


def test_every_paper_strategy_applies_saves_and_captions_on_smolvlm(tiny_smolvlm_dir, tiny_images, tmp_path):
    from captionlab.captioner import GenerationSettings, load_captioners
    from captionlab.strategies import PAPER_STRATEGIES, get_strategy
    from captionlab.strategies.prompt_learning import prompt_token_ids

    spec, _ = _load(tiny_smolvlm_dir)
    artifacts = {}
    for name in PAPER_STRATEGIES:
        strategy = get_strategy(name)
        _, loaded = _load(tiny_smolvlm_dir)
        model = strategy.apply(loaded.model, spec, loaded.tokenizer)
        trainable = sum(p.numel() for _, p in strategy.trainable_parameters(model))
        assert (trainable == 0) == (name == "zero_shot"), name
        if name == "prompt_learning":  # the template's tokens, not the processor's image wrappers
            hidden = loaded.model.config.text_config.hidden_size
            assert trainable == len(prompt_token_ids(spec, loaded.tokenizer)) * hidden
        if name == "lora":
            adapted = [n for n, _ in model.named_modules() if n.endswith("q_proj.lora_A")]
            assert adapted and all("text_model" in n for n in adapted)  # the LLM's, never the vision tower's
        artifacts[name] = None if name == "zero_shot" else tmp_path / name
        if artifacts[name] is not None:
            strategy.save(model, artifacts[name])
    captioners = load_captioners(spec, artifacts, GenerationSettings(max_new_tokens=4, batch_size=2), device="cpu")
    assert set(captioners) == set(PAPER_STRATEGIES)
    for name, captioner in captioners.items():
        captions = captioner.caption(tiny_images)
        assert len(captions) == len(tiny_images) and all(isinstance(c, str) for c in captions), name


def test_smolvlm_counts_follow_from_the_published_configs():
    from captionlab.models.loading import build_random_model
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies.counting import count_trainable, uncounted

    counts = count_trainable("smolvlm-256m")
    assert 250e6 < counts["total"] < 260e6  # "256M"
    text = get_model_spec("smolvlm-256m").config["text_config"]
    hidden, kv, inter = text["hidden_size"], text["num_key_value_heads"] * text["head_dim"], text["intermediate_size"]
    per_layer = 2 * (hidden + hidden) + 2 * (hidden + kv) + 3 * (hidden + inter)  # q, o; k, v; gate, up, down
    assert counts["lora"] == get_model_spec("smolvlm-256m").lora["r"] * per_layer * text["num_hidden_layers"]
    assert counts["prefix_tuning"] == hidden * text["num_hidden_layers"]
    assert "prompt_learning" not in counts and "tokenizer" in uncounted(counts)["prompt_learning"]
    big = build_random_model(get_model_spec("smolvlm-2.2b"), "meta")
    assert 2.2e9 < sum(p.numel() for p in big.parameters()) < 2.3e9  # "2.2B"

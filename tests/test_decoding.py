"""The greedy decoder (preallocated KV cache, graph-capturable steps) gives exactly generate()'s tokens."""

from __future__ import annotations

import pytest
import torch

from captionlab.models.decoding import GreedyDecoder, PreallocatedCache
from captionlab.models.kv_cache import ExactLengthView
from captionlab.models.loading import load_model
from captionlab.models.prompting import build_prompt
from captionlab.models.registry import get_model_spec
from captionlab.strategies import PAPER_STRATEGIES, get_strategy
from test_strategies import fresh, perturb


def prepared(model_dir, name):
    loaded, strategy = fresh(model_dir, name)
    perturb(strategy, loaded.model)  # away from identity inits (LoRA's B = 0), so the strategy changes the tokens
    loaded.model.eval()
    return loaded, strategy


def inputs_for(loaded, strategy, images, prompts=None):
    prompt = build_prompt(loaded.spec, prefix_slots=strategy.prefix_slots, placeholder=loaded.tokenizer.unk_token)
    texts = prompts or [prompt] * len(images)
    return loaded.processor(images=images, text=texts, return_tensors="pt", padding=True)


def generate_new_tokens(loaded, inputs, **kwargs):
    with torch.no_grad():
        out = loaded.model.generate(**inputs, do_sample=False, num_beams=1,
                                    pad_token_id=loaded.tokenizer.pad_token_id, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


# exact_length_steps: None (the default: exact-length steps where nothing is padded) and False (masked steps)
STEP_KINDS = {"exact-length": None, "masked": False}


@pytest.mark.parametrize("kind", list(STEP_KINDS))
@pytest.mark.parametrize("name", PAPER_STRATEGIES)
@pytest.mark.parametrize("arch", ["llava", "llava_next"])
def test_same_tokens_as_generate_for_every_strategy(tiny_llava_dir, tiny_llava_next_dir, tiny_images, name, arch,
                                                    kind):
    loaded, strategy = prepared(tiny_llava_dir if arch == "llava" else tiny_llava_next_dir, name)
    images = [tiny_images[0], tiny_images[0].transpose(0)] if arch == "llava_next" else tiny_images
    inputs = inputs_for(loaded, strategy, images)
    assert bool(inputs["attention_mask"].bool().all()), "one prompt for every image: nothing padded"
    want = generate_new_tokens(loaded, inputs, max_new_tokens=7, min_new_tokens=7)
    decoder = GreedyDecoder(loaded.model, exact_length_steps=STEP_KINDS[kind])
    got = decoder(inputs, max_new_tokens=7, min_new_tokens=7, eos_token_id=loaded.tokenizer.eos_token_id,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    assert decoder.last_step_kind == kind
    assert got.tolist() == want.tolist()


def padded_inputs(loaded, strategy, images):
    """A left-padded batch of one prompt: LLaVA-NeXT gives images of other shapes other numbers of image tokens."""
    loaded.processor.tokenizer.padding_side = "left"
    inputs = inputs_for(loaded, strategy, images)
    assert not bool(inputs["attention_mask"].bool().all()), "the batch must be padded for this test"
    return inputs


@pytest.mark.parametrize("name", PAPER_STRATEGIES)
def test_padded_batches_take_the_masked_steps_and_match_generate(tiny_llava_next_dir, tiny_images, name):
    loaded, strategy = prepared(tiny_llava_next_dir, name)
    inputs = padded_inputs(loaded, strategy, tiny_images)
    want = generate_new_tokens(loaded, inputs, max_new_tokens=6, min_new_tokens=6)
    if name == "prefix_tuning":
        # the prefix slot is found per row in a left-padded batch: each row alone, unpadded, decodes the same
        rows = [inputs_for(loaded, strategy, [image]) for image in tiny_images]
        alone = torch.cat([generate_new_tokens(loaded, row, max_new_tokens=6, min_new_tokens=6) for row in rows])
        assert alone.tolist() == want.tolist()
    for choice in (None, True):  # asked for or not, exact-length steps do not apply to a padded batch
        decoder = GreedyDecoder(loaded.model, exact_length_steps=choice)
        got = decoder(inputs, max_new_tokens=6, min_new_tokens=6, eos_token_id=loaded.tokenizer.eos_token_id,
                      pad_token_id=loaded.tokenizer.pad_token_id)
        assert decoder.last_step_kind == "masked"
        assert got.tolist() == want.tolist()


def test_left_padded_rows_and_early_eos_match_generate(tiny_llava_dir, tiny_images):
    loaded, strategy = prepared(tiny_llava_dir, "lora")
    loaded.processor.tokenizer.padding_side = "left"
    spec = loaded.spec
    prompts = [build_prompt(spec, "a photo"), build_prompt(spec, "describe the picture in a few short words please"),
               build_prompt(spec)]
    inputs = inputs_for(loaded, strategy, tiny_images, prompts)
    assert not bool(inputs["attention_mask"].bool().all()), "the batch must be padded for this test"
    eos = loaded.tokenizer.eos_token_id
    decoder = GreedyDecoder(loaded.model)
    for chosen_eos in (eos, None):
        # an EOS the random model emits early: the most frequent first token of the batch
        first = generate_new_tokens(loaded, inputs, max_new_tokens=1)[:, 0]
        stop = int(first[0]) if chosen_eos is None else chosen_eos
        want = generate_new_tokens(loaded, inputs, max_new_tokens=9, eos_token_id=stop)
        got = decoder(inputs, max_new_tokens=9, eos_token_id=stop, pad_token_id=loaded.tokenizer.pad_token_id)
        assert got.tolist() == want.tolist() and decoder.last_step_kind == "masked"
    pad = loaded.tokenizer.pad_token_id
    assert got[0, 1:].eq(pad).all(), "row 0 stopped at its first token and is padded after it"
    # a batch whose every row stops at once ends at once
    one = inputs_for(loaded, strategy, tiny_images[:1])
    stop = int(generate_new_tokens(loaded, one, max_new_tokens=1)[0, 0])
    got = decoder(one, max_new_tokens=9, eos_token_id=stop, pad_token_id=pad)
    assert got.tolist() == [[stop]]
    # one row, nothing padded: exact-length steps, stopping early as well
    stop = int(generate_new_tokens(loaded, one, max_new_tokens=3)[0, 2])
    want = generate_new_tokens(loaded, one, max_new_tokens=9, eos_token_id=stop)
    got = decoder(one, max_new_tokens=9, eos_token_id=stop, pad_token_id=pad)
    assert decoder.last_step_kind == "exact-length" and got.tolist() == want.tolist()


def test_buffers_are_reused_for_one_shape_and_rebuilt_for_another(tiny_llava_dir, tiny_images):
    loaded, strategy = prepared(tiny_llava_dir, "zero_shot")
    decoder = GreedyDecoder(loaded.model)
    kwargs = dict(max_new_tokens=5, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id)
    first = decoder(inputs_for(loaded, strategy, tiny_images[:2]), **kwargs)
    state = decoder._state
    assert state.cache.prefill_view() is not None, "the prefill must write into the preallocated buffers"
    second = decoder(inputs_for(loaded, strategy, tiny_images[:2][::-1]), **kwargs)
    assert decoder._state is state
    assert second.tolist() == first.tolist()[::-1]
    decoder(inputs_for(loaded, strategy, tiny_images), **kwargs)
    assert decoder._state is not state
    decoder.release()
    assert decoder._state is None


def test_preallocated_cache_writes_in_place():
    cache = PreallocatedCache(6, torch.device("cpu"), (2, 1, 3, 3), layers=1, dtype=torch.float32)
    key = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).reshape(2, 1, 4, 3)
    keys, values = cache.update(key, -key, 0)
    assert keys.shape == (2, 1, 6, 3) and torch.equal(keys[:, :, :4], key) and keys[:, :, 4:].abs().sum() == 0
    cache.advance(4)
    step = torch.ones(2, 1, 1, 3)
    keys, _ = cache.update(step, step, 0)
    assert torch.equal(keys[:, :, 4], step[:, :, 0]) and cache.get_seq_length() == 5 - 1
    cache.advance(1)
    assert cache.get_seq_length() == 5 and int(cache.write_at) == 5


def test_exact_length_view_returns_views_of_exactly_the_written_tokens():
    cache = PreallocatedCache(6, torch.device("cpu"), (2, 1, 3, 3), layers=2, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randn(2, 1, 4, 3, generator=generator)
    cache.write(prompt, -prompt, 1)
    cache.advance(4)
    view = ExactLengthView(cache)
    assert view.get_seq_length() == view.get_query_offset() == 4 and view.get_mask_sizes(1) == (5, 0)
    step = torch.randn(2, 1, 1, 3, generator=generator)
    keys, values = view.update(step, -step, 1)
    assert keys.shape == values.shape == (2, 1, 5, 3)
    # views of the buffers, not copies: the step's token written in place, nothing beyond it visible
    assert keys.data_ptr() == cache.keys[1].data_ptr() and values.data_ptr() == cache.values[1].data_ptr()
    assert torch.equal(keys[:, :, :4], prompt) and torch.equal(keys[:, :, 4:], step) and torch.equal(values, -keys)
    assert torch.equal(cache.keys[1][:, :, 4:5], step) and cache.keys[0].abs().sum() == 0
    cache.advance(1)
    assert view.update(step, step, 1)[0].shape[-2] == 6 and view.get_mask_sizes(1) == (6, 0)


class FakeGraphs:
    """Stands in for CUDA graph capture on the CPU: a "captured" step's output holds NaN until its replay, and a
    replay reruns the step, so what the graph bookkeeping does (which key is captured when, in which pool, what
    is replayed) is checked without a GPU. `current_key()`, if given, names the graph the decoder needs now: a
    replay asserts it is the one captured (a real graph would replay its capture's shapes, silently)."""

    def __init__(self, fail_at: int | None = None, current_key=None):
        self.captures, self.pools, self.replays = [], [], 0
        self.fail_at, self.current_key = fail_at, current_key

    def capture(self, step, pool):
        if self.fail_at is not None and len(self.captures) == self.fail_at:
            raise RuntimeError("operation not permitted when stream is capturing")
        key = self.current_key() if self.current_key else None
        output = torch.full_like(step(), float("nan"))
        self.captures.append(key)
        self.pools.append(pool)

        def replay():
            if self.current_key:
                assert self.current_key() == key, "a graph replayed at a shape other than its capture's"
            self.replays += 1
            output.copy_(step())

        return replay, output

    def install(self, monkeypatch):
        from captionlab.models import step_graphs

        monkeypatch.setattr(step_graphs, "capture_cuda_graph", self.capture)
        monkeypatch.setattr(step_graphs, "new_graph_pool", object)
        monkeypatch.setattr(GreedyDecoder, "_use_graph", lambda decoder, device: True)
        return self


def test_step_graphs_capture_each_key_once_in_one_pool_and_fall_back_eagerly(monkeypatch):
    from captionlab.models.step_graphs import StepGraphs

    fake = FakeGraphs(fail_at=2).install(monkeypatch)
    graphs, calls = StepGraphs(), []

    def step(value):
        def run():
            calls.append(value)
            return torch.full((2,), float(value))
        return run

    cpu = torch.device("cpu")
    assert graphs.run("a", step(1), cpu).tolist() == [1.0, 1.0]  # captured, then replayed: not the capture's NaN
    assert graphs.run("b", step(2), cpu).tolist() == [2.0, 2.0]
    out = graphs.run("a", step(1), cpu)
    out.add_(5)  # a copy: the graph's own output is not handed out
    assert graphs.run("a", step(1), cpu).tolist() == [1.0, 1.0]
    assert graphs.keys == ["a", "b"] and fake.replays == 4 and fake.pools[0] is fake.pools[1]
    assert graphs.run("c", step(3), cpu).tolist() == [3.0, 3.0]  # the third capture fails: run eagerly
    assert "not permitted" in graphs.error and graphs.keys == []
    calls.clear()
    assert graphs.run("a", step(1), cpu).tolist() == [1.0, 1.0] and calls == [1] and fake.replays == 4


class AttentionSpy:
    """What the decoding steps hand to attention: every SDPA call with one query token (query and key lengths,
    whether a mask was passed, is_causal) and the attention_mask the language model got for one-token inputs."""

    def __init__(self, model, monkeypatch):
        import torch.nn.functional as F

        self.sdpa, self.language_model_masks = [], []
        original = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, *args, is_causal=False, **kwargs):
            if query.shape[-2] == 1:
                self.sdpa.append((key.shape[-2], attn_mask is None, is_causal))
            return original(query, key, value, attn_mask, *args, is_causal=is_causal, **kwargs)

        def language_model_call(module, args, kwargs):
            embeds = kwargs.get("inputs_embeds")
            if embeds is not None and embeds.shape[1] == 1:
                self.language_model_masks.append(kwargs.get("attention_mask"))

        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        from captionlab.models.prompting import language_model

        handle = language_model(model).register_forward_pre_hook(language_model_call, with_kwargs=True)
        monkeypatch.setattr(self, "handle", handle, raising=False)

    def clear(self):
        self.sdpa.clear()
        self.language_model_masks.clear()


def test_unpadded_steps_attend_to_exactly_the_written_tokens_without_a_mask(tiny_llava_dir, tiny_llava_next_dir,
                                                                             tiny_images, monkeypatch):
    """Fails if an unpadded batch's steps silently fall back to the masked path (or a mask creeps back in)."""
    loaded, strategy = prepared(tiny_llava_dir, "prefix_tuning")
    spy = AttentionSpy(loaded.model, monkeypatch)
    layers = loaded.model.config.text_config.num_hidden_layers
    kwargs = dict(max_new_tokens=5, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id)
    try:
        inputs = inputs_for(loaded, strategy, tiny_images)
        length = inputs["input_ids"].shape[1]
        GreedyDecoder(loaded.model)(inputs, **kwargs)
        assert spy.language_model_masks == [None] * 4  # 4 steps after the prefill's token, no mask given
        # each step: every layer attends to the prompt and the new tokens so far, its own included; no mask, not
        # causal (transformers builds no mask for one query token over an unpadded cache)
        assert spy.sdpa == [(length + step + 1, True, False) for step in range(4) for _ in range(layers)]

        spy.clear()  # asked for masked steps: the whole buffer (prompt + 5 slots) under the mask
        GreedyDecoder(loaded.model, exact_length_steps=False)(inputs, **kwargs)
        assert spy.sdpa == [(length + 5, False, False)] * (4 * layers)
        assert all(m is not None and m.shape[-1] == length + 5 for m in spy.language_model_masks)

    finally:
        spy.handle.remove()
    # a padded batch: masked steps even by default
    loaded, strategy = prepared(tiny_llava_next_dir, "prefix_tuning")
    spy = AttentionSpy(loaded.model, monkeypatch)
    try:
        padded = padded_inputs(loaded, strategy, tiny_images)
        GreedyDecoder(loaded.model)(padded, **kwargs)
        assert spy.sdpa == [(padded["input_ids"].shape[1] + 5, False, False)] * (4 * layers)
    finally:
        spy.handle.remove()


def test_exact_length_graphs_one_per_step_length_in_one_pool(tiny_llava_dir, tiny_llava_next_dir, tiny_images,
                                                            monkeypatch):
    """The graph bookkeeping, with CUDA graph capture faked on the CPU (FakeGraphs): one graph per step length,
    each replayed only at its own length, captured once per batch shape, all in one pool; a padded batch's
    masked steps share one graph; a failing capture falls back to eager steps and says why."""
    loaded, strategy = prepared(tiny_llava_dir, "lora")
    decoder = GreedyDecoder(loaded.model)

    def graph_key():
        state = decoder._state
        return ("exact-length", state.cache.length) if decoder.last_step_kind == "exact-length" else "masked"

    fake = FakeGraphs(current_key=graph_key).install(monkeypatch)
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, eos_token_id=loaded.tokenizer.eos_token_id,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    inputs = inputs_for(loaded, strategy, tiny_images)
    length = inputs["input_ids"].shape[1]
    want = generate_new_tokens(loaded, inputs, max_new_tokens=6, min_new_tokens=6)
    assert decoder(inputs, **kwargs).tolist() == want.tolist()
    lengths = [("exact-length", length + step) for step in range(5)]
    assert fake.captures == decoder._state.graphs.keys == lengths and fake.replays == 5
    assert all(pool is fake.pools[0] for pool in fake.pools) and decoder.last_graph_error is None
    assert decoder(inputs, **kwargs).tolist() == want.tolist()  # the same shape again: replayed, not recaptured
    assert len(fake.captures) == 5 and fake.replays == 10

    failing = FakeGraphs(fail_at=2).install(monkeypatch)
    failed = GreedyDecoder(loaded.model)
    assert failed(inputs, **kwargs).tolist() == want.tolist()
    assert "not permitted" in failed.last_graph_error and failed._state.graphs.keys == []
    assert len(failing.captures) == 2 and failing.replays == 2  # the other steps ran eagerly

    fake = FakeGraphs(current_key=graph_key).install(monkeypatch)
    loaded, strategy = prepared(tiny_llava_next_dir, "lora")
    padded = padded_inputs(loaded, strategy, tiny_images)
    masked = GreedyDecoder(loaded.model)
    decoder = masked  # (graph_key reads this decoder now)
    assert masked(padded, **kwargs).tolist() == generate_new_tokens(loaded, padded, max_new_tokens=6,
                                                                    min_new_tokens=6).tolist()
    assert fake.captures == masked._state.graphs.keys == ["masked"] and fake.replays == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("kind", list(STEP_KINDS))
@pytest.mark.parametrize("name", ["zero_shot", "prompt_learning", "prefix_tuning", "lora", "dora"])
def test_cuda_graph_steps_equal_eager_steps_and_generate(tiny_llava_dir, tiny_images, name, kind):
    check_cuda_graph_steps(tiny_llava_dir, tiny_images, name, kind, compiled=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("kind", list(STEP_KINDS))
@pytest.mark.parametrize("name", ["zero_shot", "lora"])
def test_cuda_graph_steps_through_compiled_layers_equal_eager_steps(tiny_llava_dir, tiny_images, name, kind):
    """Compiled code (Triton kernels) captured inside the steps' CUDA graphs: same tokens, nothing recaptured."""
    check_cuda_graph_steps(tiny_llava_dir, tiny_images, name, kind, compiled=True)


def check_cuda_graph_steps(tiny_llava_dir, tiny_images, name, kind, compiled):
    torch.manual_seed(0)
    spec = get_model_spec(tiny_llava_dir)
    loaded = load_model(spec, device="cuda", dtype=torch.float32)
    strategy = get_strategy(name)
    loaded.model = strategy.apply(loaded.model, spec, loaded.tokenizer)
    loaded.model.eval()
    inputs = {k: v.to("cuda") for k, v in inputs_for(loaded, strategy, tiny_images).items()}
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, eos_token_id=loaded.tokenizer.eos_token_id,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    graphed = GreedyDecoder(loaded.model, cuda_graph=True, exact_length_steps=STEP_KINDS[kind], compile_steps=compiled)
    got = graphed(inputs, **kwargs)
    assert graphed.last_compile_error is None
    length = inputs["input_ids"].shape[1]
    # masked: one graph for every step; exact-length: one per step length (7 steps after the prefill's token)
    graphs = ["masked"] if kind == "masked" else [("exact-length", length + step) for step in range(7)]
    assert graphed.last_graph_error is None and graphed.last_step_kind == kind and graphed._state.graphs.keys == graphs
    again = graphed(inputs, **kwargs)  # the captured graphs replayed for a second batch of the same shape
    assert graphed._state.graphs.keys == graphs
    eager = GreedyDecoder(loaded.model, cuda_graph=False, exact_length_steps=STEP_KINDS[kind])(inputs, **kwargs)
    assert got.tolist() == eager.tolist() == again.tolist()
    want = generate_new_tokens(loaded, inputs, max_new_tokens=8, min_new_tokens=8)
    assert got.tolist() == want.tolist()


# ---------------------------------------------------------------------------------------- compiled prefill
@pytest.mark.parametrize("name", PAPER_STRATEGIES)
def test_compiled_prefill_gives_generates_tokens_for_every_strategy(tiny_llava_dir, tiny_images, name):
    loaded, strategy = prepared(tiny_llava_dir, name)
    inputs = inputs_for(loaded, strategy, tiny_images)
    want = generate_new_tokens(loaded, inputs, max_new_tokens=5, min_new_tokens=5)
    decoder = GreedyDecoder(loaded.model, compile_prefill=True)
    got = decoder(inputs, max_new_tokens=5, min_new_tokens=5, eos_token_id=loaded.tokenizer.eos_token_id,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    assert decoder.last_compile_error is None
    assert got.tolist() == want.tolist()


def test_compiled_layers_share_one_graph_per_stack_and_leave_the_model_eager(tiny_llava_dir, tiny_images):
    import sys

    from torch._dynamo.utils import counters

    from captionlab.models.compiled_layers import ROTARY_FUNCTION, CompiledLayers

    loaded, strategy = prepared(tiny_llava_dir, "zero_shot")
    model = loaded.model
    compiled = CompiledLayers(model)
    text_layers = list(model.model.language_model.layers)
    vision_layers = list([m for n, m in model.model.vision_tower.named_modules() if n.endswith("layers")][0])
    assert compiled.layers == vision_layers + text_layers or compiled.layers == text_layers + vision_layers
    attention_class = type(text_layers[0].self_attn)
    assert compiled.eager_classes == [attention_class]  # the decoder's attention (it writes the KV cache) stays eager
    attention_forward = attention_class.__dict__["forward"]
    modeling = sys.modules[attention_class.__module__]
    rotary = getattr(modeling, ROTARY_FUNCTION)

    inputs = inputs_for(loaded, strategy, tiny_images)
    with torch.no_grad():
        eager = model(**inputs).logits
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad(), compiled.active() as used:
        assert attention_class.__dict__["forward"] is not attention_forward and getattr(modeling, ROTARY_FUNCTION) is not rotary
        fused = model(**inputs).logits
    assert used and compiled.error is None
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)
    # one graph per kind of region (vision layer; decoder layer before / after its attention; rotary), however
    # many layers share it: per-layer recompiles would give 2+ per decoder layer
    assert counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    # everything is eager again outside
    assert all(layer.__dict__.get("_compiled_call_impl") is None for layer in compiled.layers)
    assert attention_class.__dict__["forward"] is attention_forward and getattr(modeling, ROTARY_FUNCTION) is rotary


@pytest.mark.parametrize("name, asked", [("lora", {"compile_prefill": True}), ("dora", {"compile_steps": True})],
                         ids=["prefill", "steps"])
def test_a_failing_compile_falls_back_to_eager_work_and_says_why(tiny_llava_dir, tiny_images, monkeypatch, name,
                                                                 asked):
    loaded, strategy = prepared(tiny_llava_dir, name)
    inputs = inputs_for(loaded, strategy, tiny_images)
    want = generate_new_tokens(loaded, inputs, max_new_tokens=4, min_new_tokens=4)

    def broken_compile(fn, **options):
        def run(*args, **kwargs):
            raise RuntimeError("no C compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    decoder = GreedyDecoder(loaded.model, **asked)  # the prefill or (with an eager prefill) the steps compiled
    got = decoder(inputs, max_new_tokens=4, min_new_tokens=4, eos_token_id=loaded.tokenizer.eos_token_id,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    assert got.tolist() == want.tolist()
    assert "no C compiler here" in decoder.last_compile_error
    assert not decoder._compiled.usable  # not retried on every batch or step


def test_captioners_compile_the_prefill_on_cuda_only_unless_told(tiny_llava_dir, tiny_images):
    from captionlab.captioner import GenerationSettings, LlavaCaptioner

    loaded, strategy = prepared(tiny_llava_dir, "zero_shot")
    auto = LlavaCaptioner(loaded, strategy)
    assert auto.decoder.compile_prefill is False  # auto: this is the CPU
    told = LlavaCaptioner(loaded, strategy, GenerationSettings(max_new_tokens=4, compile_prefill=True))
    plain = LlavaCaptioner(loaded, strategy, GenerationSettings(max_new_tokens=4, compile_prefill=False))
    assert told.decoder.compile_prefill is True
    assert told.caption(tiny_images) == plain.caption(tiny_images)
    assert told.decoder.last_compile_error is None


# ---------------------------------------------------------------------------------------- compiled decoding steps
@pytest.mark.parametrize("name", PAPER_STRATEGIES)
def test_compiled_steps_give_generates_tokens_for_every_strategy_and_step_kind(tiny_llava_dir, tiny_images, name):
    loaded, strategy = prepared(tiny_llava_dir, name)
    inputs = inputs_for(loaded, strategy, tiny_images)
    want = generate_new_tokens(loaded, inputs, max_new_tokens=5, min_new_tokens=5)
    for kind, exact_length_steps in STEP_KINDS.items():
        decoder = GreedyDecoder(loaded.model, compile_steps=True, exact_length_steps=exact_length_steps)
        got = decoder(inputs, max_new_tokens=5, min_new_tokens=5, eos_token_id=loaded.tokenizer.eos_token_id,
                      pad_token_id=loaded.tokenizer.pad_token_id)
        assert decoder.last_compile_error is None and decoder.last_step_kind == kind
        assert decoder._compiled is not None and decoder._compiled.usable  # the steps did go through it
        assert got.tolist() == want.tolist(), kind


def test_compiled_steps_compile_once_for_every_step_length(tiny_llava_dir, tiny_images):
    """The compiled layers see (batch, 1, hidden) at every step whatever the cache length (the attention that reads
    the cache is not compiled), so more steps compile nothing more: no per-length or per-layer recompiles."""
    from torch._dynamo.utils import counters

    loaded, strategy = prepared(tiny_llava_dir, "lora")
    inputs = inputs_for(loaded, strategy, tiny_images)
    kwargs = dict(min_new_tokens=0, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id)
    decoder = GreedyDecoder(loaded.model, compile_prefill=True, compile_steps=True)
    torch._dynamo.reset()
    counters.clear()
    decoder(inputs, max_new_tokens=1, **kwargs)  # the prefill alone: no step
    prefill_graphs = counters["stats"]["unique_graphs"]
    decoder(inputs, max_new_tokens=3, **kwargs)  # two steps
    stepped_graphs = counters["stats"]["unique_graphs"]
    assert stepped_graphs > prefill_graphs  # the steps did run compiled (a new shape: recompiled once)
    want = generate_new_tokens(loaded, inputs, max_new_tokens=9)
    assert decoder(inputs, max_new_tokens=9, **kwargs).tolist() == want.tolist()  # eight steps, other lengths
    assert counters["stats"]["unique_graphs"] == stepped_graphs, dict(counters["stats"])
    assert decoder.last_step_kind == "exact-length"
    # the masked steps' layers see the same shapes, and a mask the exact-length steps do not have: one graph more
    # at most (a guard on the mask being given), however many steps
    masked = GreedyDecoder(loaded.model, compile_steps=True, exact_length_steps=False)
    masked._compiled = decoder._compiled
    assert masked(inputs, max_new_tokens=9, **kwargs).tolist() == want.tolist()
    assert counters["stats"]["unique_graphs"] <= stepped_graphs + 1, dict(counters["stats"])

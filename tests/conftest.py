"""Test-session settings and the fixtures shared by every test package (plain helpers: tests/helpers.py)."""

import pytest
from hypothesis import settings

# Reproducible property tests in CI: the same examples on every run, no per-example deadline
# (the reference processor pads to 10 080 patches at budget 1120; timing is not what these tests check).
settings.register_profile("default", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("default")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A checkpoint-like directory holding a tiny ``tokenizer.model`` with every Gemma 4 control string."""
    from pipelines.sample_data import train_toy_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "tokenizer.model").write_bytes(train_toy_tokenizer())
    return directory


@pytest.fixture(scope="session")
def tok(tokenizer_dir):
    """The :class:`preprocess.tokenizer.Tokenizer` of :func:`tokenizer_dir`."""
    from preprocess.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(tokenizer_dir)


# --- the reference (transformers, test-only) ----------------------------------------------------------------
# Reached only through these fixtures, so a test that does not name one runs where transformers is missing.
# Session-scoped because each is a pure import: Hypothesis tests may take them without a health-check
# complaint, and a skip raised once is replayed for every test that asks.


@pytest.fixture(scope="session")
def reference():
    """The ``transformers`` module; skips the test where it is not installed."""
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def hf_modeling():
    """``transformers.models.gemma4.modeling_gemma4``; skips the test where it is not installed."""
    return pytest.importorskip("transformers.models.gemma4.modeling_gemma4")


@pytest.fixture(scope="session")
def hf_processor():
    """The reference processor oracle ``oracles.hf_processor``; skips the test where transformers is missing."""
    return pytest.importorskip("oracles.hf_processor")


@pytest.fixture
def reference_model(reference):
    """A factory: a random ``Gemma4ForConditionalGeneration`` with perturbed norms, scalars and clip bounds,
    saved."""
    import torch

    from model.checkpoint import model_to_hf

    def build(config, directory, seed: int = 0):
        torch.manual_seed(seed)
        model = reference.Gemma4ForConditionalGeneration(reference.Gemma4Config(**model_to_hf(config))).eval()
        with torch.no_grad():
            for key, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                if "norm" in key and tensor.dtype.is_floating_point:
                    tensor.add_(torch.randn_like(tensor) * 0.1)  # random init leaves every norm weight at 1
                elif "layer_scalar" in key:
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
                elif key.endswith(("input_min", "output_min")):
                    tensor.fill_(-0.5 - torch.rand(()).item())  # finite bounds that bite on some values
                elif key.endswith(("input_max", "output_max")):
                    tensor.fill_(0.5 + torch.rand(()).item())
                elif key.endswith("per_dim_scale") or key.endswith(("std_bias", "std_scale")):
                    tensor.copy_(torch.randn_like(tensor) * 0.5 + (1.0 if key.endswith("std_scale") else 0.0))
        model.save_pretrained(directory)
        return model

    return build

"""Settings parsing: defaults, typed values, and a clear message for each invalid value."""

from lsp_server.config import ModelSettings, Settings, parse_settings


def test_defaults():
    settings, errors = parse_settings(None)
    assert settings == Settings() and errors == []
    assert settings.model == "default"


def test_nested_and_namespaced():
    settings, errors = parse_settings({"infill": {"model": "mine", "models": {"mine": {"model": "/m/x.gguf",
                                       "n_ctx": 8192, "n_gpu_layers": -1}},
                                       "completion": {"max_tokens_single": 20, "languages": {"markdown": False}}}})
    assert errors == []
    name, ms = settings.model_settings()
    assert name == "mine" and ms.model == "/m/x.gguf" and ms.n_ctx == 8192
    assert settings.completion.max_tokens_single == 20
    assert settings.completion.languages == {"markdown": False}


def test_invalid_values_fall_back_to_defaults_with_messages():
    settings, errors = parse_settings({"load": "sometimes", "completion": {"max_tokens_single": "many",
                                       "enable": "yes"}, "bogus": 1, "cache": 5})
    assert settings.load == "lazy"
    assert settings.completion.max_tokens_single == 48
    assert settings.completion.enable is True
    text = "\n".join(errors)
    for fragment in ("load", "max_tokens_single", "enable", "bogus", "cache"):
        assert fragment in text


def test_unknown_model_name_is_a_catalog_name_or_path():
    name, ms = Settings(model="/tmp/x.gguf").model_settings()
    assert ms == ModelSettings(model="/tmp/x.gguf")

"""The model catalogue: the shipped file's contents, pricing, and a loader that refuses bad files by name."""

from __future__ import annotations

import pytest

from rivya_core.catalog import Catalog, CatalogError, default_catalog, load_catalog

GOOD_MODEL = """
[[model]]
id = "m1"
name = "Model One"
category = "image"
provider = "lumen"
runtime = "async_task"
direct_generation = true
prompt = { min = 1, max = 100 }
pricing = { type = "per_task", credits = 2 }

[model.params.width]
type = "int"
default = 512
min = 256
max = 1024
"""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return default_catalog()


def test_shipped_catalogue_covers_the_required_models(catalog):
    assert len(catalog.models) >= 12
    assert {m.category for m in catalog.models} == {"image", "video", "audio", "chat"}
    assert 3 <= len(catalog.providers()) <= 4
    assert {m.billing_type for m in catalog.models} == {"per_task", "per_second", "per_token"}
    assert any(not m.direct_generation for m in catalog.models)
    assert any(m.runtime == "sync" for m in catalog.models)
    assert all(m.runtime == "chat" for m in catalog.models if m.category == "chat")
    isolate = catalog.get("sonora-isolate")
    assert isolate.rules.verify_duration_kind == "audio" and isolate.reference("audio").required


def test_lookup(catalog):
    assert catalog.get("lumen-flash").name == "Lumen Flash"
    assert catalog.get("nope") is None
    assert catalog.get(["not", "hashable"]) is None
    assert catalog.get(None) is None
    assert default_catalog() is default_catalog()


def test_per_task_price(catalog):
    assert catalog.get("lumen-pro").base_credits({}) == 6


def test_per_second_price_uses_the_duration_param_and_rounds_up(catalog):
    v2 = catalog.get("kinetica-v2")
    assert v2.base_credits({"duration": 7}) == 21
    assert v2.base_credits({}) == 15  # default duration 5 s
    i2v = catalog.get("kinetica-i2v")  # 4.5 credits per second
    assert i2v.base_credits({"duration": 3.0}) == 14  # 13.5 -> 14


def test_per_token_price_is_exact_and_rounds_up(catalog):
    mini = catalog.get("parley-mini")  # 0.1 in, 0.3 out per 1k
    assert mini.chat_credits(0, 10_000) == 3
    assert mini.chat_credits(1, 0) == 1
    assert mini.chat_credits(0, 0) == 0
    chat = catalog.get("parley-chat")  # 0.5 in, 1.5 out per 1k
    assert chat.chat_credits(2_000, 1_000) == 3
    assert chat.base_credits({}) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", None, True])
def test_chat_credits_refuse_bad_token_counts(catalog, bad):
    with pytest.raises(Exception) as info:
        catalog.get("parley-chat").chat_credits(bad, 0)
    assert getattr(info.value, "code", None) == "tokens_invalid"


def test_chat_tool_starts_an_image_model(catalog):
    chat = catalog.get("parley-chat")
    assert "image_generation" in chat.tools
    assert catalog.get(dict(chat.tool_models)["image_generation"]).category == "image"


def test_a_good_file_loads(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(GOOD_MODEL)
    cat = load_catalog(path)
    assert cat.ids() == ("m1",) and cat.get("m1").param("width").default == 512


def _load_bad(tmp_path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(path) in info.value.message
    assert info.value.code == "catalog_invalid"
    return info.value.message


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('category = "image"', 'category = "hologram"', "category"),
        ('runtime = "async_task"', 'runtime = "batch"', "runtime"),
        ('runtime = "async_task"', 'runtime = "chat"', "runtime"),
        ("direct_generation = true", 'direct_generation = "yes"', "direct_generation"),
        ("direct_generation = true\n", "", "direct_generation"),
        ("max = 100 }", "max = 0 }", "prompt.max"),
        ("min = 1, max = 100", "min = 200, max = 100", "prompt.min"),
        ("credits = 2", "credits = -2", "pricing.credits"),
        (
            'type = "per_task", credits = 2',
            'type = "per_second", credits_per_second = 1, duration_param = "x"',
            "pricing.duration_param",
        ),
        ('type = "per_task", credits = 2', 'type = "per_token", input_per_1k = 1, output_per_1k = 1', "pricing.type"),
        ('type = "per_task", credits = 2', 'type = "per_task"', "pricing.credits"),
        ('type = "int"', 'type = "complex"', "params.width.type"),
        ("default = 512", "default = 4096", "params.width.default"),
        ("default = 512", 'default = "512"', "params.width.default"),
        ("min = 256", "min = 2000", "params.width.min"),
        ('provider = "lumen"', 'provider = ""', "provider"),
        ('provider = "lumen"', 'provider = "lumen"\ncolour = "red"', "colour"),
        ('provider = "lumen"', 'provider = "lumen"\ntools = ["image_generation"]', "tools"),
    ],
)
def test_malformed_model_is_refused_naming_file_model_and_field(tmp_path, old, new, field):
    assert old in GOOD_MODEL
    message = _load_bad(tmp_path, GOOD_MODEL.replace(old, new, 1))
    assert "'m1'" in message
    assert f"'{field}'" in message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('\n[[model.references]]\nkind = "smell"\nmax_count = 1\nmax_size_bytes = 10\n', "references[0].kind"),
        ('\n[[model.references]]\nkind = "image"\nmax_count = 0\nmax_size_bytes = 10\n', "references[0].max_count"),
        ('\n[model.params.style]\ntype = "str"\ndefault = "x"\nchoices = ["a", "b"]\n', "params.style.default"),
        ('\n[model.params.style]\ntype = "str"\ndefault = "a"\nchoices = ["a", "A"]\n', "params.style.choices"),
        ('\n[model.params.on]\ntype = "bool"\ndefault = true\nmin = 0\n', "params.on.min"),
        ('\n[model.rules]\nverify_duration_kind = "audio"\nmax_duration_s = 10\n', "rules.verify_duration_kind"),
    ],
)
def test_malformed_subtables_are_refused(tmp_path, extra, field):
    message = _load_bad(tmp_path, GOOD_MODEL + extra)
    assert "'m1'" in message and f"'{field}'" in message


def test_duplicate_ids_are_refused(tmp_path):
    assert "'id'" in _load_bad(tmp_path, GOOD_MODEL + GOOD_MODEL)


def test_model_without_id_is_named_by_position(tmp_path):
    message = _load_bad(tmp_path, GOOD_MODEL.replace('id = "m1"\n', ""))
    assert "'#1'" in message and "'id'" in message


def test_tool_model_must_exist(tmp_path):
    chat = """
[[model]]
id = "c1"
name = "Chat"
category = "chat"
provider = "parley"
runtime = "chat"
direct_generation = true
prompt = { min = 1, max = 100 }
pricing = { type = "per_token", input_per_1k = 1, output_per_1k = 2 }
tools = ["image_generation"]
tool_models = { image_generation = "ghost" }
"""
    message = _load_bad(tmp_path, GOOD_MODEL + chat)
    assert "'c1'" in message and "'tool_models.image_generation'" in message


@pytest.mark.parametrize("text", ["this is = = not toml", "", 'model = "x"', "[other]\na = 1\n"])
def test_unreadable_files_are_refused(tmp_path, text):
    _load_bad(tmp_path, text)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="no such catalogue file"):
        load_catalog(tmp_path / "absent.toml")

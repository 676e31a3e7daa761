import time
from pathlib import Path

import pytest

from dispatcher.rendering import (
    CHANNEL_PARTS,
    TemplateError,
    TemplateInfo,
    TemplateRegistry,
    UnknownTemplate,
)

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
ALL_CHANNELS = ("in_app", "email", "sms", "push")


def write_template(root: Path, name: str, files: dict[str, str]) -> Path:
    """Write ``{"default/sms.txt": "...", ...}`` under ``root/name`` and return ``root``."""
    for relative, text in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def shipped() -> TemplateRegistry:
    return TemplateRegistry(SHIPPED)


def render_app_install(
    shipped: TemplateRegistry, state: str | None, locale: str | None = None, app_name: str = "Foo"
) -> dict[str, dict[str, str]]:
    context = {"app_name": app_name, "state": state, "category": "app", "notification_id": "app#1", "locale": locale}
    return shipped.render("app-install", ALL_CHANNELS, context, locale=locale)


def test_shipped_app_install_has_every_channel_and_korean(shipped: TemplateRegistry) -> None:
    info = shipped.info("app-install")
    assert "app-install" in shipped.names()
    assert (info.name, info.channels, info.locales, info.category) == (
        "app-install",
        frozenset(ALL_CHANNELS),
        ("default", "ko"),
        "app",
    )
    assert info.description


def test_render_returns_every_part_of_requested_channels_only(shipped: TemplateRegistry) -> None:
    out = shipped.render("app-install", ["email", "sms"], {"app_name": "Foo", "state": "completed"})
    assert set(out) == {"email", "sms"}
    assert set(out["email"]) == set(CHANNEL_PARTS["email"])
    assert set(out["sms"]) == {"text"}


@pytest.mark.parametrize(
    ("state", "title"),
    [
        ("installing", "Installing Foo…"),
        ("completed", "Foo installed"),
        ("failed", "Foo failed to install"),
        (None, "Update on Foo"),
        ("paused", "Update on Foo"),
    ],
)
def test_app_install_title_follows_state(shipped: TemplateRegistry, state: str | None, title: str) -> None:
    out = render_app_install(shipped, state)
    assert out["in_app"]["title"] == title
    assert out["push"]["title"] == title
    assert out["email"]["subject"] == title


@pytest.mark.parametrize(
    ("state", "words"),
    [("installing", "설치 중"), ("completed", "설치 완료"), ("failed", "설치 실패"), (None, "알림")],
)
def test_app_install_in_korean_for_ko_kr(shipped: TemplateRegistry, state: str | None, words: str) -> None:
    out = render_app_install(shipped, state, locale="ko-KR")
    assert out["in_app"]["title"] == f"Foo {words}" + ("…" if state == "installing" else "")
    assert "Foo" in out["sms"]["text"] and "[스토어]" in out["sms"]["text"]


@pytest.mark.parametrize("state", ["installing", "completed", "failed", None])
def test_app_install_parts_are_trimmed_and_sms_fits_one_message(shipped: TemplateRegistry, state: str | None) -> None:
    for locale in (None, "ko"):
        out = render_app_install(shipped, state, locale=locale, app_name="Super Photo Editor Pro")
        for parts in out.values():
            assert all(text and text == text.strip() for text in parts.values())
        assert len(out["sms"]["text"]) < 160


def test_unknown_locale_falls_back_to_default(shipped: TemplateRegistry) -> None:
    assert render_app_install(shipped, "completed", locale="fr-CA")["in_app"]["title"] == "Foo installed"


def test_app_name_is_escaped_in_html_but_raw_in_text(shipped: TemplateRegistry) -> None:
    email = render_app_install(shipped, "completed", app_name="<script>x</script>")["email"]
    assert "&lt;script&gt;x&lt;/script&gt;" in email["html"]
    assert "<script>" not in email["html"]
    assert "<script>x</script> has been installed" in email["text"]
    assert email["subject"] == "<script>x</script> installed"


def test_email_html_is_a_whole_document(shipped: TemplateRegistry) -> None:
    html = render_app_install(shipped, "failed")["email"]["html"]
    assert html.startswith("<!DOCTYPE html>") and html.endswith("</html>")
    assert "<strong>Foo</strong>" in html


def test_channel_needs_every_part_in_default(tmp_path: Path) -> None:
    root = write_template(
        tmp_path,
        "partial",
        {
            "default/sms.txt": "hi",
            "default/push.title.txt": "t",  # no push.body.txt: push is incomplete
            "default/email.subject.txt": "s",
            "default/email.txt": "t",
            "default/email.html": "<p>h</p>",
            "ko/in_app.title.txt": "t",  # in_app only in ko: not a channel
            "ko/in_app.body.txt": "b",
            "default/notes.md": "stray file, ignored",
        },
    )
    assert TemplateRegistry(root).info("partial").channels == frozenset({"sms", "email"})


def test_info_reads_metadata_and_lists_locales_default_first(tmp_path: Path) -> None:
    root = write_template(
        tmp_path,
        "promo",
        {
            "template.json": '{"description": "Weekly deals", "category": "marketing"}',
            "default/sms.txt": "hi",
            "ko/sms.txt": "안녕",
            "en-US/sms.txt": "hi",
        },
    )
    write_template(tmp_path, "bare", {"default/sms.txt": "x"})
    registry = TemplateRegistry(root)
    assert registry.names() == ["bare", "promo"]
    assert registry.info("promo") == TemplateInfo(
        name="promo",
        channels=frozenset({"sms"}),
        locales=("default", "en-US", "ko"),
        category="marketing",
        description="Weekly deals",
    )
    assert (registry.info("bare").category, registry.info("bare").description) == (None, "")


@pytest.fixture
def localized(tmp_path: Path) -> TemplateRegistry:
    return TemplateRegistry(
        write_template(
            tmp_path,
            "hello",
            {
                "default/push.title.txt": "Hello",
                "default/push.body.txt": "Default body",
                "ko/push.title.txt": "안녕하세요",  # no ko push body: falls back to default
                "ko-KR/push.body.txt": "한국 본문",
                "pt_BR/push.title.txt": "Olá",
            },
        )
    )


@pytest.mark.parametrize(
    ("locale", "title", "body"),
    [
        ("ko-KR", "안녕하세요", "한국 본문"),  # title from ko, body from ko-KR
        ("ko_kr", "안녕하세요", "한국 본문"),
        ("KO", "안녕하세요", "Default body"),  # body missing in ko: default
        ("ko-KP", "안녕하세요", "Default body"),
        ("pt-br", "Olá", "Default body"),  # folder pt_BR matches pt-br
        ("en", "Hello", "Default body"),
        (None, "Hello", "Default body"),
    ],
)
def test_each_part_falls_back_along_the_locale_chain(
    localized: TemplateRegistry, locale: str | None, title: str, body: str
) -> None:
    assert localized.render("hello", ["push"], {}, locale=locale) == {"push": {"title": title, "body": body}}


def test_missing_variable_is_a_template_error_naming_variable_and_part(tmp_path: Path) -> None:
    root = write_template(tmp_path, "t", {"default/sms.txt": "line one\n{{ app_name }} done"})
    with pytest.raises(TemplateError) as caught:
        TemplateRegistry(root).render("t", ["sms"], {"state": None})
    message = str(caught.value)
    assert "'app_name' is undefined" in message
    assert "'t'" in message and "'default'" in message and "'sms.txt'" in message
    assert "line 2" in message


def test_missing_variable_names_the_locale_folder_it_came_from(tmp_path: Path) -> None:
    root = write_template(tmp_path, "t", {"default/sms.txt": "ok", "ko/sms.txt": "{{ nope }}"})
    with pytest.raises(TemplateError, match=r"locale 'ko', part file 'sms.txt'.*'nope' is undefined"):
        TemplateRegistry(root).render("t", ["sms"], {}, locale="ko-KR")


def test_syntax_error_fails_at_construction_naming_the_file(tmp_path: Path) -> None:
    root = write_template(tmp_path, "broken", {"default/sms.txt": "ok", "ko/email.html": "<p>{% if x %}</p>"})
    with pytest.raises(TemplateError) as caught:
        TemplateRegistry(root)
    message = str(caught.value)
    assert "'broken'" in message and "'ko'" in message and "email.html" in message
    assert str(root / "broken" / "ko" / "email.html") in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ app_name.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_blocks_attribute_escapes(tmp_path: Path, source: str) -> None:
    root = write_template(tmp_path, "evil", {"default/sms.txt": source})
    with pytest.raises(TemplateError, match="'evil'.*'sms.txt'"):
        TemplateRegistry(root).render("evil", ["sms"], {"app_name": "Foo"})


def test_any_exception_while_rendering_is_a_template_error(tmp_path: Path) -> None:
    root = write_template(tmp_path, "math", {"default/sms.txt": "{{ 1 / count }}"})
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        TemplateRegistry(root).render("math", ["sms"], {"count": 0})


def test_include_is_not_supported(tmp_path: Path) -> None:
    root = write_template(tmp_path, "inc", {"default/sms.txt": "{% include 'other.txt' %}"})
    with pytest.raises(TemplateError, match="'inc'"):
        TemplateRegistry(root).render("inc", ["sms"], {})


def test_unknown_template(shipped: TemplateRegistry) -> None:
    with pytest.raises(UnknownTemplate, match="unknown template 'nope'"):
        shipped.render("nope", ["sms"], {})
    with pytest.raises(LookupError):
        shipped.info("nope")


def test_requesting_a_channel_the_template_lacks_is_a_value_error(tmp_path: Path) -> None:
    registry = TemplateRegistry(write_template(tmp_path, "sms-only", {"default/sms.txt": "hi"}))
    with pytest.raises(ValueError, match="push"):
        registry.render("sms-only", ["sms", "push"], {})
    with pytest.raises(ValueError, match="fax"):
        registry.render("sms-only", ["fax"], {})


def test_rendering_does_not_read_files_again(tmp_path: Path) -> None:
    root = write_template(tmp_path, "t", {"default/sms.txt": "Hi {{ name }}"})
    registry = TemplateRegistry(root)
    (root / "t" / "default" / "sms.txt").unlink()
    assert registry.render("t", ["sms"], {"name": "Ann"}) == {"sms": {"text": "Hi Ann"}}


def test_block_tags_leave_no_blank_lines(tmp_path: Path) -> None:
    source = "{% if state == 'a' %}\nA\n{% else %}\nB\n{% endif %}\nend\n"
    registry = TemplateRegistry(write_template(tmp_path, "t", {"default/sms.txt": source}))
    assert registry.render("t", ["sms"], {"state": "a"}) == {"sms": {"text": "A\nend"}}


def test_template_folder_without_default_is_an_error(tmp_path: Path) -> None:
    write_template(tmp_path, "nodefault", {"ko/sms.txt": "hi"})
    with pytest.raises(TemplateError, match="'nodefault'.*default"):
        TemplateRegistry(tmp_path)


def test_bad_metadata_is_an_error(tmp_path: Path) -> None:
    write_template(tmp_path, "meta", {"default/sms.txt": "hi", "template.json": '{"category": 3}'})
    with pytest.raises(TemplateError, match="template.json"):
        TemplateRegistry(tmp_path)


def test_missing_templates_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="does not exist"):
        TemplateRegistry(tmp_path / "absent")


@pytest.mark.parametrize(("source", "says"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "DISPATCHER_RENDER_TIMEOUT"),
    ("{{ 'x' * 10**8 }}", "DISPATCHER_RENDER_MAX_CHARS"),
    ("{{ 'x' * 600 + 'y' * 600 }}", "DISPATCHER_RENDER_MAX_CHARS"),
    ("{{ 7 ** 100000000 }}", "exponent"),
    ("{{ 'ab'|center(10**7) }}", "DISPATCHER_RENDER_MAX_CHARS"),
    ("{% for i in range(100000) %}{{ 'yyyyyyyyyy' }}{% endfor %}", "over 1,000 characters"),
])
def test_a_template_over_its_budget_is_a_template_error(tmp_path: Path, source: str, says: str) -> None:
    from dispatcher.render_budget import RenderBudget

    root = write_template(tmp_path, "t", {"default/sms.txt": source})
    registry = TemplateRegistry(root, RenderBudget(seconds=0.5, max_chars=1000))
    started = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        registry.render("t", ["sms"], {})
    assert says in str(caught.value) and "'sms.txt'" in str(caught.value)
    assert time.monotonic() - started < 5  # bounded: the 10**10-step loop stopped


def test_a_render_past_its_callers_cap_is_not_a_template_error_and_renders_without_it(
        tmp_path: Path) -> None:
    """The gateway renders its trial on the event loop under a few milliseconds' cap and, past
    it, renders again in a thread: the cap must stop a slow template without blaming it."""
    from dispatcher.render_budget import OverCap, RenderBudget, capped

    slow = "{% for i in range(50) %}{% for j in range(10000) %}{% endfor %}{% endfor %}done"
    root = write_template(tmp_path, "t", {"default/sms.txt": slow})
    registry = TemplateRegistry(root, RenderBudget(seconds=30, max_chars=1000))
    with pytest.raises(OverCap), capped(0.001):
        registry.render("t", ["sms"], {})
    assert registry.render("t", ["sms"], {}) == {"sms": {"text": "done"}}
    with capped(30):  # under the cap: as without one
        assert registry.render("t", ["sms"], {}) == {"sms": {"text": "done"}}


def test_a_template_within_its_budget_renders_as_before(tmp_path: Path) -> None:
    from dispatcher.render_budget import RenderBudget

    root = write_template(tmp_path, "t", {"default/sms.txt": "{% for i in range(3) %}{{ i * 2 }}{% endfor %}"
                                                             "{{ 'ab' * 2 }}{{ 2 ** 8 }}"})
    assert TemplateRegistry(root, RenderBudget(0.5, 1000)).render("t", ["sms"], {}) == {"sms": {"text": "024abab256"}}


def test_the_budget_is_the_renders_cpu_time_not_the_wall_clocks(tmp_path: Path) -> None:
    """A render held up without working (here a call that blocks, as a thread waiting for the
    GIL or a core on a busy machine does) is not over its budget: only its own CPU time is."""
    from dispatcher.render_budget import RenderBudget

    root = write_template(tmp_path, "t", {"default/sms.txt": (
        "{{ blocked() }}{% for i in range(1000) %}{{ i % 2 }}{% endfor %}{{ blocked() }}!")})
    registry = TemplateRegistry(root, RenderBudget(seconds=0.05, max_chars=10_000))
    rendered = registry.render("t", ["sms"], {"blocked": lambda: time.sleep(0.1) or "b"})
    assert rendered == {"sms": {"text": "b" + "01" * 500 + "b!"}}

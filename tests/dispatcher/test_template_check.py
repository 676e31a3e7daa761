"""``dispatcher templates check`` as a template author runs it: a real process, its output and
exit status, on the shipped templates (clean) and on a folder with one of each defect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "fixtures" / "broken-templates"


def run_check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    return subprocess.run([sys.executable, "-m", "dispatcher", "templates", "check", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_shipped_templates_are_clean() -> None:
    done = run_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "no problems" in done.stderr


@pytest.fixture(scope="module")
def broken() -> tuple[int, list[str]]:
    done = run_check("--dir", str(BROKEN), cwd=ROOT)
    return done.returncode, done.stdout.splitlines()


F = "tests/fixtures/broken-templates"


@pytest.mark.parametrize(("where", "says"), [
    # syntax error (Jinja notices the unclosed if at the end of the file)
    (f"{F}/syntax/default/sms.txt:4:", "syntax error: Unexpected end of template"),
    # undefined variables: each one, at its line
    (f"{F}/names/default/push.body.txt:2:", "'app_nmae' is undefined"),
    (f"{F}/names/default/push.body.txt:4:", "no attribute 'plan'"),
    # an unknown part file, with the name it was probably meant to be
    (f"{F}/names/default/emial.html:", "unknown part file 'emial.html' (did you mean email.html?)"),
    # a channel with some parts missing from default/
    (f"{F}/partial/default:", "channel email is incomplete"),
    # a locale missing a part the default has
    (f"{F}/names/ko:", "locale ko has no push.body.txt"),
    # too long for the channel
    (f"{F}/long/default/sms.txt:", "SMS text renders to 1,999 characters"),
    (f"{F}/long/default/email.subject.txt:", "email subject renders to 1,039 characters"),
    # a layout that does not exist, at the line naming it
    (f"{F}/layout-missing/default/sms.txt:2:", "names the layout '_layouts/nope.html', which does not exist"),
])
def test_each_defect_is_reported_with_file_and_line(broken: tuple[int, list[str]], where: str, says: str) -> None:
    status, lines = broken
    assert status == 1
    assert any(line.startswith(where) and says in line for line in lines), "\n".join(lines)


def test_nothing_else_is_reported(broken: tuple[int, list[str]]) -> None:
    assert len(broken[1]) == 9, "\n".join(broken[1])


def test_the_defects_the_example_fills_are_not_reported(broken: tuple[int, list[str]]) -> None:
    # names/default/push.title.txt uses app_name and user.name, both in its template.json example
    assert not [line for line in broken[1] if line.startswith(f"{F}/names/default/push.title.txt")]


def test_a_missing_folder_is_exit_status_2(tmp_path: Path) -> None:
    done = run_check("--dir", str(tmp_path / "absent"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def run_preview(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    return subprocess.run([sys.executable, "-m", "dispatcher", "templates", "preview", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_preview_prints_each_part_and_the_locale_it_came_from(tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"app_name": "Zed"}', encoding="utf-8")
    done = run_preview("app-install", "--locale", "ko-KR", "--state", "failed", "--data", f"@{data}",
                       "--channel", "sms", "--channel", "email")
    assert done.returncode == 0, done.stderr
    assert "== sms\n-- text (from ko/)\n[스토어] Zed 설치에 실패했습니다" in done.stdout
    assert "-- html (from ko/)\n<!DOCTYPE html>" in done.stdout and "이메일 수신 거부" in done.stdout
    example = run_preview("app-install", "--json", "--channel", "push")  # the example of template.json
    assert example.returncode == 0 and '"title": "Foo installed"' in example.stdout
    assert '"variants": {\n    "push": {\n      "title": "default"' in example.stdout


def test_preview_refuses_bad_arguments_clearly() -> None:
    bad = run_preview("app-install", "--data", "{not json")
    assert bad.returncode == 2 and "--data: not JSON" in bad.stderr
    unknown = run_preview("nope")
    assert unknown.returncode == 1 and "unknown template 'nope'" in unknown.stderr

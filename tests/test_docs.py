"""The docs cannot drift from the code: docs/configuration.md is what the settings table
generates, every option is in conf/vsftpd.conf.example, every subcommand's ``--help`` is a
manual page with examples that parse, and what the READMEs and the docs tell readers to type
(commands, options, scripts, links) exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from cosftp_prefork.config.docs import DEFAULT_FILE, regenerate, render_section
from cosftp_prefork.config.options import SETTINGS
from cosftp_prefork.config.settings import parse_config
from cosftp_prefork.server.cli import build_parser

from .docs_text import (
    block_after,
    blocks,
    broken_links,
    cosftpctl_commands,
    cosftpctl_lines,
    missing_files,
    options,
    parse_problem,
    read,
    unknown_options,
)
from .server_proc import ROOT

READMES = ["README.md", "README.zh-CN.md"]
# The docs README.md sends readers to: every file and link they name must exist.
DOCS = [os.path.join("docs", name) for name in ("configuration.md", "operations.md",
                                                 "security.md", "clients.md", "cluster.md",
                                                 "features.md", "architecture.md", "events.md",
                                                 "migration.md", "replies.md")]
GENERATOR = [sys.executable, "-m", "cosftp_prefork.config.docs"]


def test_the_configuration_reference_is_what_the_settings_table_generates():
    text = read(DEFAULT_FILE)
    assert regenerate(text) == text, (
        f"{DEFAULT_FILE} differs from the settings table: run "
        "python -m cosftp_prefork.config.docs (scripts/gen-docs) and commit the result")


def test_every_option_is_in_the_reference_with_what_it_accepts():
    text = read(DEFAULT_FILE)
    for setting in SETTINGS:
        assert setting.accepts, f"{setting.name}: its parser does not say what it accepts " \
                                "(config/values.py, _accepts)"
        entry = f"- **`{setting.name}`**: {setting.help}"
        section = render_section(setting.section)
        assert entry in section and section in text, setting.name


def test_the_generator_rewrites_a_stale_reference_and_check_says_so(tmp_path):
    stale = tmp_path / "configuration.md"
    shutil.copy(os.path.join(ROOT, DEFAULT_FILE), stale)
    text = stale.read_text()
    fresh_port = "- **`listen_port`**: FTP control port.\n  Default `2121`"
    assert fresh_port in text
    stale.write_text(text.replace(fresh_port, "- **`listen_port`**: FTP port.\n  Default `21`"))
    checked = subprocess.run([*GENERATOR, "--check", str(stale)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 1
    assert "differs from the settings table" in checked.stderr
    assert "python -m cosftp_prefork.config.docs" in checked.stderr
    rewritten = subprocess.run([*GENERATOR, str(stale)], capture_output=True, text=True,
                               timeout=60)
    assert rewritten.returncode == 0, rewritten.stderr
    assert stale.read_text() == text
    assert subprocess.run([*GENERATOR, "--check", str(stale)], timeout=60).returncode == 0


def test_the_generator_refuses_a_reference_that_lost_a_section(tmp_path):
    broken = tmp_path / "configuration.md"
    text = read(DEFAULT_FILE)
    start = text.index("<!-- BEGIN GENERATED: [CLUSTER] -->")
    broken.write_text(text[:start])
    done = subprocess.run([*GENERATOR, "--check", str(broken)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "missing ['CLUSTER', 'HOOKS']" in done.stderr


def test_every_option_is_in_the_example_config_and_nothing_else():
    example = read(os.path.join("conf", "vsftpd.conf.example"))
    assert unknown_options(example) == []
    documented = set(options(example))
    assert [s.name for s in SETTINGS if (s.section, s.name) not in documented] == [], \
        "options missing from conf/vsftpd.conf.example"


def _subcommands() -> list[str]:
    """The subcommands, as ``cosftpctl --help`` lists them."""
    usage = build_parser().format_usage()
    return re.search(r"\{([a-z,-]+)\}", usage).group(1).split(",")


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_is_a_manual_page_with_examples_that_parse(command):
    done = subprocess.run([os.path.join(ROOT, "scripts", "cosftpctl"), command, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: cosftpctl {command} ")
    assert "\nexamples:\n" in done.stdout, f"cosftpctl {command} --help shows no example " \
                                           "(server/manual.py PAGES)"
    examples = cosftpctl_commands(done.stdout.split("\nexamples:\n", 1)[1])
    assert any(command in line.split() for line in examples), examples
    for line in examples:
        assert parse_problem(line) == "", f"cosftpctl {line}: {parse_problem(line)}"


def test_the_top_level_help_points_to_the_subcommands_pages():
    done = subprocess.run([os.path.join(ROOT, "scripts", "cosftpctl"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "each command's exit status and examples: cosftpctl COMMAND --help" in done.stdout


@pytest.mark.parametrize("readme", READMES)
def test_the_readme_names_only_options_the_settings_table_has(readme):
    markdown = read(readme)
    ini = [block.text for block in blocks(markdown) if block.language == "ini"]
    assert ini, f"{readme} has no ```ini block (the minimal configuration)"
    assert [problem for text in ini for problem in unknown_options(text)] == []


@pytest.mark.parametrize("readme", READMES)
def test_the_readme_commands_and_files_exist(readme):
    markdown = read(readme)
    commands = cosftpctl_lines(markdown)
    assert commands, f"{readme} names no cosftpctl command"
    problems = {line: parse_problem(line) for line in commands}
    assert {line: problem for line, problem in problems.items() if problem} == {}
    assert missing_files(markdown) == []
    assert broken_links(readme) == []


@pytest.mark.parametrize("readme", READMES)
def test_the_readme_minimal_configuration_is_accepted(readme):
    """The first ``ini`` block is the minimal configuration a reader copies: valid as it is
    (given the environment variable it names)."""
    ini = next(block.text for block in blocks(read(readme)) if block.language == "ini")
    config = parse_config(ini, f"{readme}.conf", {"COS_SECRETKEY_0": "from-the-environment"})
    assert [a.user for a in config.accounts] == ["user0"]
    assert config.accounts[0].secret_key == "from-the-environment"


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_commands_files_and_links_exist(doc):
    markdown = read(doc)
    problems = {line: parse_problem(line) for line in cosftpctl_lines(markdown)}
    assert {line: problem for line, problem in problems.items() if problem} == {}
    assert missing_files(markdown) == []
    assert broken_links(doc) == []


def test_both_readmes_give_the_same_newcomer_commands():
    def commands(readme: str) -> list[str]:
        block = block_after(read(readme), "<!-- newcomer-path:")
        return [line.split("  #")[0].rstrip() for line in block.text.splitlines()]
    assert commands("README.md") == commands("README.zh-CN.md")


def test_the_readmes_link_to_each_other():
    assert "(README.zh-CN.md)" in read("README.md")
    assert "(README.md)" in read("README.zh-CN.md")

"""Template loading and validation, variables and rendering: no servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gameplane.errors import NotFound, TemplateError
from gameplane.templates import (
    SHIPPED_DIR,
    Rendering,
    list_templates,
    load_template,
    parse_template,
    resolve_variables,
)
from gameplane.templates.model import parse_size

MINIMAL = """
[template]
name = "mini"

[start]
command = ["/bin/true"]
"""


def problems(exc: pytest.ExceptionInfo[TemplateError]) -> str:
    return "\n".join(exc.value.details["problems"])


def with_extra(extra: str) -> str:
    return MINIMAL + extra


# -- the shipped templates ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in SHIPPED_DIR.glob("*.toml")))
def test_every_shipped_template_loads(name: str) -> None:
    template = load_template(name)
    assert template.name == name


def test_the_shipped_game_templates_are_there() -> None:
    assert {"freeciv", "minetest", "teeworlds"} <= set(list_templates())


def test_minetest_has_no_console_and_is_ready_by_log_and_udp() -> None:
    t = load_template("minetest")
    assert t.console.type == "none" and t.stop.command == [] and t.stop.signal == "SIGTERM"
    assert t.ports["game"].protocol == "udp" and t.ports["game"].default == 30000
    assert t.ready.log and t.ready.udp and t.ready.udp.port == "game"
    assert t.ready.udp.send == "4f45740300000003ffdc01"
    assert t.ready.udp.expect == "4f457403000100"
    assert t.backup.paths == ["world", "minetest.conf"] and t.backup.pre == []
    assert t.start.command[0] == "/usr/lib/minetest/minetestserver"
    assert t.start.command[-2:] == ["--logfile", ""]


def test_minetest_ready_line_matches_the_real_line() -> None:
    t = load_template("minetest")
    r = Rendering("/d", {"game": 30001}, {})
    assert t.ready.log
    pattern = re.compile(r.render(t.ready.log, escape=re.escape))
    line = '2026-11-26 08:28:41: ACTION[Main]: Server for gameid="minetest" listening on 127.0.0.1:30001.'
    assert pattern.search(line)
    assert not pattern.search(line.replace("30001", "300012"))


def test_minetest_config_carries_the_variables() -> None:
    t = load_template("minetest")
    values = resolve_variables(t, {"bind_address": "127.0.0.1", "max_users": "4"})
    conf = next(f for f in t.install.files if f.path == "minetest.conf")
    text = Rendering("/d", {"game": 30000}, values).render(conf.content or "")
    for line in ("bind_address = 127.0.0.1", "max_users = 4", "server_announce = false",
                 "ipv6_server = false"):
        assert line in text.splitlines()


def test_teeworlds_uses_the_econ_behind_a_password_prompt() -> None:
    t = load_template("teeworlds")
    assert t.console.type == "tcp" and t.console.port == "econ"
    assert t.console.password == "{var.econ_password}"
    assert t.console.password_prompt == "Enter password:"
    assert t.ports["econ"].protocol == "tcp" and t.ports["game"].protocol == "udp"
    assert t.stop.command == ["shutdown"]
    assert t.variables["econ_password"].default is None


def test_teeworlds_needs_an_econ_password() -> None:
    t = load_template("teeworlds")
    with pytest.raises(TemplateError) as exc:
        resolve_variables(t, {})
    assert exc.value.details == {"missing": ["econ_password"]}
    assert resolve_variables(t, {"econ_password": "pw"})["econ_password"] == "pw"


def test_teeworlds_ready_line_matches_the_real_line() -> None:
    t = load_template("teeworlds")
    assert t.ready.log
    pattern = re.compile(Rendering("/d", {"game": 8303, "econ": 36473}, {}).render(
        t.ready.log, escape=re.escape))
    assert pattern.search("[2026-11-26 08:35:15][econ]: bound to 127.0.0.1:36473")
    failed = "[2026-11-26 08:35:15][econ]: couldn't open socket. port might already be in use"
    assert not pattern.search(failed)


# -- validation ---------------------------------------------------------------------------


def test_the_minimal_template_loads_with_defaults() -> None:
    t = parse_template(MINIMAL)
    assert t.console.type == "stdin" and t.stop.signal == "SIGTERM" and t.stop.command == []
    assert t.ready.timeout == 60 and t.restart.policy == "on-failure" and t.restart.clean_exit_codes == [0]
    assert t.backup.paths == ["."] and t.start.workdir == "{data}" and t.sandbox.user == "instance"


@pytest.mark.parametrize(("extra", "where"), [
    ("\n[stop]\ntimeout = 1\ncomand = 'quit'\n", "stop.comand"),
    ("\n[limits]\nmemroy = '1GiB'\n", "limits.memroy"),
    ("\n[ports.game]\nprotocl = 'udp'\n", "ports.game.protocl"),
])
def test_an_unknown_field_is_an_error_naming_it(extra: str, where: str) -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra(extra), "operator.toml")
    assert exc.value.code == "invalid_template"
    assert exc.value.details["source"] == "operator.toml"
    assert f"{where}: unknown field" in exc.value.details["problems"]


def test_an_unknown_top_level_section_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[consle]\ntype = 'none'\n"))
    assert "consle: unknown field" in problems(exc)


def test_bad_toml_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template("[template\nname = 'x'")
    assert problems(exc).startswith("TOML:")


def test_a_bad_regex_in_ready_log_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[ready]\nlog = 'listening on (port'\n"))
    assert "ready.log" in problems(exc) and "bad regular expression" in problems(exc)


def test_a_placeholder_in_ready_log_is_not_taken_for_a_regex_quantifier() -> None:
    t = parse_template(with_extra("\n[ports.game]\n\n[ready]\nlog = 'port {port.game}$'\n"))
    assert t.ready.log == "port {port.game}$"


@pytest.mark.parametrize("placeholder", ["{port.nope}", "{var.nope}"])
def test_an_undeclared_placeholder_is_an_error(placeholder: str) -> None:
    text = MINIMAL.replace('["/bin/true"]', f'["/bin/true", "{placeholder}"]')
    with pytest.raises(TemplateError) as exc:
        parse_template(text)
    assert f"placeholder {placeholder} refers to undeclared" in problems(exc)


@pytest.mark.parametrize("section", [
    "\n[[install.files]]\npath = 'a.cfg'\ncontent = 'port={port.nope}'\n",
    "\n[[install.files]]\npath = '{var.nope}.cfg'\n",
    "\n[ready]\nlog = 'on {port.nope}'\n",
    "\n[start.env]\nX = '{var.nope}'\n",
])
def test_placeholders_are_checked_everywhere_they_are_rendered(section: str) -> None:
    text = MINIMAL.replace("[start]", section + "\n[start]")
    with pytest.raises(TemplateError) as exc:
        parse_template(text)
    assert "refers to undeclared" in problems(exc)


def test_declared_placeholders_load() -> None:
    t = parse_template(with_extra(
        "\n[ports.game]\nprotocol = 'udp'\n\n[variables.name]\ndefault = 'x'\n"
    ).replace('["/bin/true"]', '["/bin/true", "{data}/a", "{port.game}", "{var.name}"]'))
    assert t.start.command[1:] == ["{data}/a", "{port.game}", "{var.name}"]


def test_console_tcp_without_a_port_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[console]\ntype = 'tcp'\n"))
    assert "console type 'tcp' needs 'port'" in problems(exc)


def test_console_tcp_naming_an_undeclared_port_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[console]\ntype = 'tcp'\nport = 'econ'\n"))
    assert "undeclared port 'econ'" in problems(exc)


def test_a_password_on_a_stdin_console_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[console]\npassword = 'x'\n"))
    assert "only apply to console type 'tcp'" in problems(exc)


def test_stop_command_with_console_none_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[console]\ntype = 'none'\n\n[stop]\ncommand = 'quit'\n"))
    assert "stop.command needs a console" in problems(exc)


def test_stop_command_is_one_or_many() -> None:
    assert parse_template(with_extra("\n[stop]\ncommand = 'quit'\n")).stop.command == ["quit"]
    assert parse_template(with_extra("\n[stop]\ncommand = ['save', 'quit']\n")).stop.command == [
        "save", "quit"]


@pytest.mark.parametrize(("signal", "name"), [("term", "SIGTERM"), ("SIGINT", "SIGINT"), ("hup", "SIGHUP")])
def test_stop_signals_are_normalized(signal: str, name: str) -> None:
    assert parse_template(with_extra(f"\n[stop]\nsignal = '{signal}'\n")).stop.signal == name


@pytest.mark.parametrize("signal", ["SIGKILL", "stop", "SIGNOPE"])
def test_unusable_stop_signals_are_errors(signal: str) -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra(f"\n[stop]\nsignal = '{signal}'\n"))
    assert "stop.signal" in problems(exc)


def test_probes_must_name_ports_of_their_protocol() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[ports.game]\nprotocol = 'udp'\n\n[ready]\ntcp = 'game'\n"))
    assert "not tcp" in problems(exc)
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[ports.game]\n\n[ready.udp]\nport = 'game'\nsend = '00'\n"))
    assert "not udp" in problems(exc)


def test_udp_probe_bytes_are_hex_with_spaces_allowed() -> None:
    t = parse_template(with_extra("\n[ports.game]\nprotocol = 'udp'\n\n[ready.udp]\nport = 'game'\n"
                                  "send = 'ff 00 AB'\nexpect = '4f45'\n"))
    assert t.ready.udp and t.ready.udp.send == "ff00AB" and t.ready.udp.expect == "4f45"
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra(
            "\n[ports.game]\nprotocol = 'udp'\n\n[ready.udp]\nport = 'game'\nsend = 'xyz'\n"))
    assert "not hex bytes" in problems(exc)


def test_a_bad_template_name_is_an_error() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(MINIMAL.replace('"mini"', '"Not OK"'))
    assert "template.name" in problems(exc)


def test_a_start_command_is_required_and_not_empty() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template("[template]\nname = 'x'\n")
    assert "start: Field required" in problems(exc)
    with pytest.raises(TemplateError):
        parse_template(MINIMAL.replace('["/bin/true"]', "[]"))


def test_an_install_file_mode_must_be_octal() -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra("\n[[install.files]]\npath = 'a'\nmode = '0999'\n"))
    assert "install.files.0.mode" in problems(exc)


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("512MiB", 512 * 1024**2), ("2GiB", 2 * 1024**3), ("1.5GiB", int(1.5 * 1024**3)),
    ("1G", 10**9), ("100MB", 100 * 10**6), ("64k", 64_000), ("4096", 4096), ("10B", 10), (1048576, 1048576),
])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_limits_parse_sizes() -> None:
    t = parse_template(with_extra("\n[limits]\nmemory = '512MiB'\ndisk = '10GiB'\n"))
    assert t.limits.memory == 512 * 1024**2 and t.limits.disk == 10 * 1024**3


@pytest.mark.parametrize("text", ["lots", "-1", "5 parsecs", ""])
def test_bad_sizes_are_errors(text: str) -> None:
    with pytest.raises(TemplateError) as exc:
        parse_template(with_extra(f"\n[limits]\nmemory = '{text}'\n"))
    assert "limits.memory" in problems(exc)


# -- loading from folders ---------------------------------------------------------------------


def test_operator_folders_are_searched_before_the_shipped_templates(tmp_path: Path) -> None:
    (tmp_path / "freeciv.toml").write_text(MINIMAL.replace('"mini"', '"freeciv"'))
    assert load_template("freeciv", [tmp_path]).start.command == ["/bin/true"]
    assert load_template("freeciv").start.command[0] == "/usr/games/freeciv-server"
    assert list_templates([tmp_path])["freeciv"].start.command == ["/bin/true"]


def test_a_template_can_be_loaded_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert load_template(str(path)).name == "mini"


def test_an_unknown_template_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as exc:
        load_template("nope", [tmp_path])
    assert exc.value.code == "template_not_found"
    with pytest.raises(NotFound):
        load_template(str(tmp_path / "nope.toml"))


def test_a_broken_operator_template_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(with_extra("\n[stop]\nsignall = 'TERM'\n"))
    with pytest.raises(TemplateError) as exc:
        load_template("broken", [tmp_path])
    assert exc.value.details["source"] == str(path)


# -- variables ----------------------------------------------------------------------------------

VARS = with_extra("""
[variables.required]
description = "no default"

[variables.name]
default = "server"
""")


def test_resolve_variables_merges_defaults() -> None:
    t = parse_template(VARS)
    assert resolve_variables(t, {"required": "r"}) == {"required": "r", "name": "server"}
    assert resolve_variables(t, {"required": "r", "name": "mine"})["name"] == "mine"
    assert resolve_variables(t, {"required": ""})["required"] == ""


def test_resolve_variables_rejects_unknown_names() -> None:
    with pytest.raises(TemplateError) as exc:
        resolve_variables(parse_template(VARS), {"required": "r", "nmae": "x", "zzz": "y"})
    assert exc.value.code == "invalid_variables"
    assert exc.value.details == {"unknown": ["nmae", "zzz"]}


def test_resolve_variables_rejects_missing_required_values() -> None:
    with pytest.raises(TemplateError) as exc:
        resolve_variables(parse_template(VARS), {"name": "x"})
    assert exc.value.code == "invalid_variables"
    assert exc.value.details == {"missing": ["required"]}


@pytest.mark.parametrize("value", ["two\nlines", "cr\rhere", "nul\x00", "esc\x1b[0m", "del\x7f"])
def test_resolve_variables_rejects_control_characters(value: str) -> None:
    with pytest.raises(TemplateError) as exc:
        resolve_variables(parse_template(VARS), {"required": value})
    assert exc.value.code == "invalid_variables"
    assert exc.value.details == {"variable": "required", "problem": "control character"}


def test_resolve_variables_accepts_unicode_and_punctuation() -> None:
    value = 'Ünïcødé server: "quoted" & {braces}'
    assert resolve_variables(parse_template(VARS), {"required": value})["required"] == value


# -- rendering ----------------------------------------------------------------------------------


def test_render_substitutes_every_placeholder_kind() -> None:
    r = Rendering("/srv/data", {"game": 30000}, {"name": "My server"})
    assert r.render("{data}/world:{port.game}:{var.name}") == "/srv/data/world:30000:My server"
    assert r.render("no placeholders {here} {port} {var.}") == "no placeholders {here} {port} {var.}"


def test_render_escapes_only_the_substituted_values() -> None:
    r = Rendering("/srv/a.b", {"game": 1}, {"name": "a+b (x)"})
    rendered = r.render(r"^{var.name} at {data} on :{port.game}\.$", escape=re.escape)
    assert rendered == r"^a\+b\ \(x\) at /srv/a\.b on :1\.$"
    assert re.search(rendered, "a+b (x) at /srv/a.b on :1.")
    assert not re.search(rendered, "aab (x) at /srv/aXb on :1.")


def test_render_does_not_rescan_substituted_values() -> None:
    r = Rendering("/d", {"game": 1}, {"a": "{var.b}", "b": "no"})
    assert r.render("{var.a}") == "{var.b}"

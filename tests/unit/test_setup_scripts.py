"""scripts/setup.sh once set up (the offline switches, kept in .venv until offline.py changes) and scripts/uv_pip.py
(pip's configuration handed to uv). Nothing is installed: the copies' .venv is faked (its stamp, this Python)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("uv_pip", REPO / "scripts" / "uv_pip.py")
uv_pip = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(uv_pip)

SETUP_READS = ("scripts/setup.sh", "requirements.lock", "scripts/make_venv.sh", "multimodal/__init__.py",
               "multimodal/pipeline/__init__.py", "multimodal/pipeline/offline.py")


def set_up_copy(root: Path) -> Path:
    """The files setup.sh reads, copied to `root`, beside a .venv that setup.sh takes as installed."""
    for rel in SETUP_READS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    key = hashlib.sha256((root / "requirements.lock").read_bytes() + (root / "scripts" / "make_venv.sh").read_bytes())
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / f".installed-{key.hexdigest()[:16]}").touch()
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    return root


def sourced_env(root: Path, **env: str) -> dict[str, str]:
    """The environment after `source scripts/setup.sh` in `root`, from a shell that had `env`."""
    done = subprocess.run(["bash", "-c", "source scripts/setup.sh && env -0"], cwd=root, env={**os.environ, **env},
                          capture_output=True, check=True)
    return dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if item)


def kept_switches(root: Path) -> list[Path]:
    return sorted((root / ".venv").glob(".offline-env-*"))


def test_setup_script_forces_the_hub_offline_whatever_the_shell_had(tmp_path):
    env = sourced_env(set_up_copy(tmp_path), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", DO_NOT_TRACK="0")
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["DO_NOT_TRACK"] == "1"
    assert env["PATH"].split(":")[0] == str(tmp_path / ".venv" / "bin")
    assert "${HF_HUB_OFFLINE:-" not in (REPO / "scripts" / "setup.sh").read_text()


def test_the_switches_are_kept_in_the_venv_until_offline_py_changes(tmp_path):
    root = set_up_copy(tmp_path)
    sourced_env(root)
    [kept] = kept_switches(root)
    kept.write_text("export KEPT_FILE_READ=1\n")   # read as it is while offline.py is unchanged: no Python runs
    assert sourced_env(root)["KEPT_FILE_READ"] == "1"

    offline = root / "multimodal" / "pipeline" / "offline.py"
    offline.write_text(offline.read_text().replace('"DO_NOT_TRACK": "1",', '"DO_NOT_TRACK": "1", "NEW_SWITCH": "1",'))
    env = sourced_env(root)
    assert env["NEW_SWITCH"] == "1" and "KEPT_FILE_READ" not in env
    assert len(kept_switches(root)) == 1 and kept_switches(root) != [kept]


def test_pip_settings_take_pips_precedence_variables_over_install_over_global():
    listing = """global.find-links='/global'
install.find-links='/install'
:env:.find-links='/env/a /env/b'
global.extra_index_url='file:///one file:///two'
install.constraint='/etc/c.txt'
global.cert='/etc/ca.crt'
not a setting
"""
    assert uv_pip.effective_settings(listing) == {"find-links": "/env/a /env/b", "constraint": "/etc/c.txt",
                                                  "extra-index-url": "file:///one file:///two", "cert": "/etc/ca.crt"}


def test_pip_settings_become_uv_options_and_the_rest_is_named():
    args, env, unmapped = uv_pip.uv_options({
        "find-links": "/a /b", "extra-index-url": "file:///one", "index-url": "https://mirror/simple",
        "constraint": "/etc/c.txt", "no-index": "false", "cert": "/etc/ca.crt", "default-timeout": "180",
        "disable-pip-version-check": "1", "pre": "1",
    })
    assert args == ["--index-strategy", "unsafe-best-match", "--constraint", "/etc/c.txt",
                    "--extra-index-url", "file:///one", "--find-links", "/a", "--find-links", "/b",
                    "--index-url", "https://mirror/simple"]
    assert env == {"SSL_CERT_FILE": "/etc/ca.crt", "UV_HTTP_TIMEOUT": "180"}
    assert unmapped == ["pre"]
    assert "--no-index" in uv_pip.uv_options({"no-index": "yes"})[0]


def test_uv_runs_with_the_pip_configuration_of_the_machine(tmp_path):
    fake_uv = tmp_path / "uv"
    fake_uv.write_text('#!/bin/sh\nprintf "%s\\n" "$@" "SSL_CERT_FILE=$SSL_CERT_FILE"\n')
    fake_uv.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "SSL_CERT", "UV_"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="/wheels", PIP_CERT="/etc/ca.crt")   # no config file read
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "uv_pip.py"), str(fake_uv), "install", "torch"],
                          env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["pip", "install", "torch", "--index-strategy", "unsafe-best-match",
                                        "--find-links", "/wheels", "SSL_CERT_FILE=/etc/ca.crt"]

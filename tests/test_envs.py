"""envs/*.yaml (for `--sdm conda` on clusters): they parse and pin what requirements.txt pins."""

import re

import pytest

from conftest import REPO, load_yaml

ENVS = sorted((REPO / "envs").glob("*.yaml"))


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_every_rule_env_exists():
    used = set()
    for smk in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(r'"\.\./envs/([\w-]+\.yaml)"', smk.read_text()))
    assert used and used <= {p.name for p in ENVS}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_requirements(env):
    spec = load_yaml(env)
    deps = spec["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pins = _requirements()
    assert pip
    for line in pip:
        name, _, version = line.partition("==")
        assert version, f"{env.name}: {line!r} is not pinned"
        key = name.lower().replace("_", "-")
        assert pins.get(key) == version, f"{env.name}: {line} but requirements.txt pins {pins.get(key)}"


def test_torch_pair_is_the_installable_one():
    pins = _requirements()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"

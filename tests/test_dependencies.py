"""pyproject.toml's ranges and constraints.txt's pins (what CI installs with) agree: every dependency of kslm[dev,hf]
is pinned, every pin lies in its range, torch's floor is where weights_only loading has no known bypass (2.10), and
.ci/run installs exactly as the README says."""

import tomllib
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pins() -> dict:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert canonicalize_name(name) not in pins, f"{name} pinned twice"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_every_dependency_is_pinned_inside_its_range():
    project, pins = _project(), _pins()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in ("dev", "hf", "serve") for r in project["optional-dependencies"][extra]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"
        if name not in ("ruff", "pillow"):  # (tools and a plotting extra's helper: no behaviour of kslm's own)
            assert req.specifier.contains(Version("999")) is False, f"{req.name} has no upper bound"


def test_torch_floor_is_the_safe_weights_only():
    torch = next(Requirement(r) for r in _project()["dependencies"] if r.startswith("torch"))
    assert not torch.specifier.contains(Version("2.9.1")) and torch.specifier.contains(Version("2.10.0"))
    assert torch.specifier.contains(_pins()["torch"])


def test_ci_installs_as_the_readme_says():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install = "pip install torch==2.13.0 && python3 -m pip install -c constraints.txt -e '.[dev]'"
    assert install in ci
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install torch==2.13.0 && pip install -c constraints.txt -e '.[dev]'" in readme

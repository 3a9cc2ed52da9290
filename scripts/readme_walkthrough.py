#!/usr/bin/env python3
"""Run README.md top to bottom, as a new user would, in a fresh clone (issue 24's acceptance).

    python scripts/readme_walkthrough.py [--working-tree] [--keep] [--list]

HEAD (with --working-tree also the uncommitted files git does not ignore) is cloned into a temp dir T as T/kslm beside
T/shared, a link to the real ../shared (the configs read ../shared/data). Every command runs there, in README order,
with PYTHONPATH = the clone (its code, not an installed kslm), a fresh KSLM_CACHE and the Hugging Face hub offline.
The commands: each line of a ```bash block (`\\` continuations joined, `# comments` cut), the `$ …` lines of plain ```
blocks (the lines under one are its output), each ```python block and the `python bench/….py` spans of the prose. A
plain block without `$` is the output of its section's last command (the quick start's) or no command (Layout).

Each command meets the first of RULES that matches it: run as written, shrunk (`kslm fit`: SHRINK), specially (serve,
python, scripts' --help) or skipped with its reason printed. A command no rule matches stops the walk before anything
runs: a new README command is never skipped silently. Output the README shows must appear in order, numbers and
hashes free; `kslm: error:` output must be exactly those lines, exit code 2. One line per command, then a summary;
exit code 0 only if all passed. Stdlib only.
"""

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tokenize
import urllib.request
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 20  # optimizer steps of a shrunk `kslm fit` (the configs train 300 to 5,000)
RESUME_STEPS = 10  # a resumed fit (--ckpt_path) trains this many more than the run it resumes
SHRINK = {  # config folder → what is appended to its `kslm fit` (later options override the README's own)
    "configs/lm/": ["--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "10"],
    "configs/ner/": ["--trainer.limit_val_batches", "4", "--trainer.log_every_n_steps", "10"],
    "configs/re/": ["--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "10"],
}
PROSE_OUTPUT = {  # commands whose output the README states in prose, not in a block: (command start, the words)
    "kslm predict --config configs/nbce/kslm-lm.yaml": "kslm: wrote N predictions to out.jsonl",
}
DATA_LANGS = {"yaml", "json", "jsonl", "toml", "text", "markdown"}  # fenced blocks that hold no commands
TIMEOUT = 900  # seconds per command
REPL = ("import ast, sys; f = sys.argv[1]; tree = ast.parse(open(f, encoding='utf-8').read())\n"  # a ```python block
        "last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None\n"  # run as a REPL
        "ns = {'__name__': '__main__'}; exec(compile(tree, f, 'exec'), ns)\n"  # would: its last value printed
        "if last is not None: print(repr(eval(compile(ast.Expression(last.value), f, 'eval'), ns)))\n")
SCRIPT = re.compile(r"^(?:\w+=\S*\s+)*python3? (?:experiments|bench)/\S+\.py\b")


@dataclass
class Step:
    kind: str  # "bash" (a ```bash line), "$" (a plain block's `$ …` line), "python" (a ```python block), "prose"
    command: str
    line: int  # README line number
    section: str
    expect: list = field(default_factory=list)  # output lines the README shows for it
    rule: "Rule | None" = None


@dataclass
class Rule:
    name: str
    match: object  # a regex searched in the command, or a function of the Step
    action: str  # run | fit | help | serve | python | skip
    why: str

    def matches(self, step):
        return self.match(step) if callable(self.match) else re.search(self.match, step.command) is not None


RULES = [
    Rule("install", r"^pip install\b", "skip", "installs packages: the walk uses this environment's install"),
    Rule("test suite", r"^(?:python3? -m )?pytest\b", "skip", "the test suite is pytest's job (and ~5 min on its own)"),
    Rule("several GPUs", r"--trainer\.devices\s+(?:[2-9]|\d\d)", "skip", "needs several GPUs; this machine has a CPU only"),
    Rule("tensorboard", r"^tensorboard\b", "skip", "a server for a browser: nothing to check here"),
    Rule("script", lambda s: s.kind != "python" and SCRIPT.match(s.command) is not None, "help",
         "an experiment or benchmark takes minutes to hours: its --help must work"),
    Rule("README error", lambda s: s.command.startswith("kslm ") and expected_code(s) == 2, "run",
         "a user mistake: exit 2 and the README's line, as written"),
    Rule("training", lambda s: s.command.startswith("kslm fit ") and shrink_folder(s.command) is not None, "fit",
         f"shrunk to {STEPS} steps (+{RESUME_STEPS} for a resume), a few validation batches"),
    Rule("server", r"^kslm serve\b", "serve", "runs until stopped: /health, one /predict against kslm predict, SIGTERM → 0"),
    Rule("inference and files", r"^kslm (?:predict|export|score|validate|test|consolidate)\b", "run", "runs as written"),
    Rule("input file", r"^printf (?:'[^']*' ?)+> ?[\w./-]+$", "run", "writes an input file the next commands read"),
    Rule("python block", lambda s: s.kind == "python", "python", "runs with python; its last expression is printed"),
]


def expected_code(step):
    return 2 if any(line.startswith("kslm: error:") for line in step.expect) else 0


def shrink_folder(command):
    config = re.search(r"--config[ =](\S+)", command)
    return next((f for f in SHRINK if config and config.group(1).startswith(f)), None)


# ------------------------------------------------------------------------------------------------ reading README.md
def strip_comment(line):
    """A shell line without its `# comment` (a # at the start or after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def extract(text):
    """README.md → (steps in order, problems: blocks that are neither commands, output nor data)."""
    steps, problems, section, lines, i = [], [], "", text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("```"):  # prose: its `python bench/….py` spans are commands too (their --help)
            steps += [Step("prose", m, i + 1, section) for m in re.findall(r"`(python3? bench/[^`]+)`", line)]
            i += 1
            continue
        lang, start = line[3:].strip().lower(), i + 1
        end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), len(lines))
        body, i = lines[start:end], end + 1
        if lang == "bash":
            joined, first = "", None
            for n, raw in enumerate(body, start + 1):
                first, continued = first or n, raw.rstrip().endswith("\\")
                joined += raw.rstrip()[:-1] + " " if continued else raw
                if continued:
                    continue
                command = " ".join(strip_comment(joined).split())
                if command:
                    steps.append(Step("bash", command, first, section))
                joined, first = "", None
        elif lang == "python":
            steps.append(Step("python", "\n".join(body), start, section))
        elif lang == "":
            own = [Step("$", raw[2:].strip(), n, section) for n, raw in enumerate(body, start + 1) if raw.startswith("$ ")]
            if own:
                for n, raw in enumerate(body, start + 1):
                    owner = [s for s in own if s.line <= n]
                    if owner and not raw.startswith("$ ") and raw.strip():
                        owner[-1].expect.append(raw)
                    elif not owner and raw.strip():
                        problems.append(f"README.md:{n}: output before any `$` line of its block: {raw!r}")
                steps += own
            elif steps and steps[-1].section == section:
                steps[-1].expect += [raw for raw in body if raw.strip()]
        elif lang not in DATA_LANGS:
            problems.append(f"README.md:{start}: a ```{lang} block: no rule says how to run it")
    prose = " ".join(text.replace("`", "").split())
    for step in steps:
        for start, words in PROSE_OUTPUT.items():
            if step.command.startswith(start):
                if words not in prose:
                    problems.append(f"PROSE_OUTPUT: the README no longer says {words!r} (update the rule)")
                step.expect.append(words)
    return steps, problems


def plan(text):
    """README.md → (steps, each with its rule; problems: unrecognised commands and blocks)."""
    steps, problems = extract(text)
    for step in steps:
        step.rule = next((r for r in RULES if r.matches(step)), None)
        if step.rule is None:
            problems.append(f"README.md:{step.line}: no rule for `{step.command}` ({step.section})")
    return steps, problems


# ------------------------------------------------------------------------------------------------ output checks
VARIABLE = re.compile(r"(~/\.cache/kslm|version_\d+|\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{12,}\b"
                      r"|\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?|\bN\b)")
NUMBER = r"[\d,]*\d(?:\.\d+)?(?:e[-+]?\d+)?"


def pattern(line, cache):
    """A README output line as a regex: numbers and hex ids free, ~/.cache/kslm = the cache, version_N as written."""
    out = []
    for k, part in enumerate(VARIABLE.split(line)):
        if k % 2 == 0 or part.startswith("version_"):
            out.append(re.escape(part))
        elif part == "~/.cache/kslm":
            out.append(re.escape(str(cache)))
        else:
            out.append("[0-9a-f]+" if re.fullmatch("[0-9a-f]{12,}", part) and not part.isdigit() else NUMBER)
    return re.compile("".join(out))


def check_output(step, output, code, cache):
    """'' or why the output or exit code is not what the README shows."""
    want = expected_code(step)
    if code != want:
        return f"exit code {code}, the README's is {want}"
    lines = [raw.strip() for raw in output.splitlines() if raw.strip()]
    if want == 2:
        pairs = zip(step.expect, lines, strict=False)
        same = len(lines) == len(step.expect) and all(pattern(e, cache).fullmatch(o) for e, o in pairs)
        return "" if same else f"printed {lines!r}, the README shows {step.expect!r}"
    pos = 0
    for shown in step.expect:
        rx = pattern(shown.strip(), cache)
        while pos < len(lines) and not rx.fullmatch(lines[pos]):
            pos += 1
        if pos == len(lines):
            return f"no output line (in order) like the README's {shown.strip()!r}"
        pos += 1
    return ""


# ------------------------------------------------------------------------------------------------ running
class Walk:
    def __init__(self, root, clone, log):
        self.root, self.clone, self.log, self.cache = root, clone, log, root / "cache"
        self.env = {**os.environ, "PYTHONPATH": str(clone), "KSLM_CACHE": str(self.cache),
                    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.predictions = {}  # checkpoint → the records `kslm predict` printed for it

    def shell(self, command, n, timeout=TIMEOUT):
        try:
            done = subprocess.run(["bash", "-c", command], cwd=self.clone, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
            code, output = done.returncode, done.stdout
        except subprocess.TimeoutExpired as e:
            code = f"timeout ({timeout} s)"
            output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        (self.log / f"{n:02d}.log").write_text(f"$ {command}\n{output}\nexit: {code}\n", encoding="utf-8")
        return code, output

    def run(self, step, n):
        """(command as run, '' or why it failed)."""
        action, command = step.rule.action, step.command
        if action == "fit":
            more = RESUME_STEPS if "--ckpt_path" in command else 0  # a resume trains on, validated at its end
            extra = f" --trainer.max_steps {STEPS + more} --trainer.val_check_interval {more or STEPS} "
            command += extra + " ".join(SHRINK[shrink_folder(command)])
        elif action == "help":
            command = SCRIPT.match(command).group(0) + " --help"
        elif action == "serve":
            return self.serve(step, n)
        elif action == "python":
            return self.python(step, n)
        code, output = self.shell(command, n)
        why = check_output(step, output, code, self.cache)
        if action == "help" and not why and "usage" not in output.lower():
            why = "--help printed no usage"
        ckpt = re.search(r"--ckpt_path (\S+)", command)
        if not why and command.startswith("kslm predict") and ckpt and "--predictions.path" not in command:
            self.predictions[ckpt.group(1)] = [json.loads(x) for x in output.splitlines() if x.startswith('{"line"')]
        return command, why

    def python(self, step, n):
        path = self.root / f"readme-block-{step.line}.py"
        path.write_text(step.command + "\n", encoding="utf-8")
        code, output = self.shell(f"python -c {shlex.quote(REPL)} {path}", n)
        why = check_output(step, output, code, self.cache)
        shown = last_comment(step.command)
        if not why and "…" in shown:  # the README's value up to its first "…", cut to the model's list
            stable = shown[:shown.index("…")]
            stable = stable[:stable.rfind("[") + 1] if "[" in stable else stable
            printed = output.strip().splitlines()[-1] if output.strip() else ""
            if not printed.startswith(stable):
                why = f"printed {printed!r}, the README shows {shown!r}"
            elif isinstance(value := ast.literal_eval(printed), dict):  # as kslm predict's record of the same text
                same = [r for ckpt, recs in self.predictions.items() if ckpt in step.command for r in recs
                        if r.get("text") == value.get("text")]
                why = f"{value!r}, kslm predict wrote {same[0]!r}" if same and same[0] != value else ""
        return f"python {path.name}", why

    def serve(self, step, n):
        command, ckpt = step.command, re.search(r"--ckpt_path (\S+)", step.command).group(1)
        recs = self.predictions.get(ckpt)
        if not recs:
            return command, f"no earlier `kslm predict --ckpt_path {ckpt}` output to compare /predict with"
        with socket.socket() as s, socket.socket() as other:
            port = 8000 if s.connect_ex(("127.0.0.1", 8000)) else other.bind(("127.0.0.1", 0)) or other.getsockname()[1]
        command += "" if port == 8000 else f" --port {port}"  # the README's port is taken here: another one
        log = (self.log / f"{n:02d}.log").open("w", encoding="utf-8")
        print(f"$ {command}", file=log, flush=True)
        server = subprocess.Popen(["bash", "-c", "exec " + command], cwd=self.clone, env=self.env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while not healthy(url):
                if server.poll() is not None or time.time() > deadline:
                    return command, f"/health never answered (server exit code: {server.poll()}, 180 s at most)"
                time.sleep(0.5)
            body = json.dumps({"text": recs[0]["text"]}, ensure_ascii=False).encode()
            request = urllib.request.Request(url + "/predict", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=60) as r:
                answer = json.loads(r.read())
            if answer != recs[0]:
                return command, f"/predict answered {answer!r}, kslm predict wrote {recs[0]!r}"
            os.killpg(server.pid, signal.SIGTERM)  # the whole group: LitServe's processes too (docs/serving.md)
            code = server.wait(timeout=120)
            return command, "" if code == 0 else f"exit code {code} after SIGTERM, docs/serving.md says 0"
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            return command, f"{type(e).__name__}: {e}"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            log.close()


def healthy(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def last_comment(code):
    """The comment on the last line of a python block, without its '#'."""
    comments = [t for t in tokenize.generate_tokens(StringIO(code).readline) if t.type == tokenize.COMMENT]
    last = len(code.rstrip("\n").splitlines())
    return next((t.string[1:].strip() for t in comments if t.start[0] == last), "")


def git(*args, cwd=REPO):
    return subprocess.run(["git", *args], cwd=cwd, check=True, stdout=subprocess.PIPE, text=True).stdout


def fresh_copy(root, working_tree):
    """T/kslm: a clone of REPO's HEAD (+ its uncommitted files with working_tree) beside T/shared → ../shared."""
    shared = (REPO.parent / "shared").resolve()
    if not shared.is_dir():
        sys.exit(f"readme walkthrough: {shared} (the configs' ../shared) is missing")
    clone, head = root / "kslm", git("rev-parse", "HEAD").strip()
    git("clone", "--quiet", "--no-checkout", str(REPO), str(clone))
    git("checkout", "--quiet", "--detach", head, cwd=clone)
    if working_tree:
        for name in git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0"):
            if name and (REPO / name).is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, clone / name)
            elif name and (clone / name).is_file():
                (clone / name).unlink()  # deleted in the working tree
    (root / "shared").symlink_to(shared)
    return clone, head


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--working-tree", action="store_true", help="copy the uncommitted files too (default: HEAD only)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (kept anyway when something fails)")
    ap.add_argument("--list", action="store_true", help="only print each command's rule (no clone, nothing runs)")
    ap.add_argument("--readme", type=Path, help="with --list: this file instead of the repository's README.md")
    args = ap.parse_args(argv)
    if args.list:
        steps, problems = plan((args.readme or REPO / "README.md").read_text(encoding="utf-8"))
        for n, step in enumerate(steps, 1):
            print(f"[{n:2d}] {step.rule.name if step.rule else 'NO RULE':20s} {step.command.splitlines()[0]}")
        print(*problems, sep="\n", file=sys.stderr)
        return 1 if problems else 0
    root = Path(tempfile.mkdtemp(prefix="kslm-readme-"))
    clone, head = fresh_copy(root, args.working_tree)
    steps, problems = plan((clone / "README.md").read_text(encoding="utf-8"))
    if problems:
        print("readme walkthrough: unrecognised, so nothing ran:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    (root / "logs").mkdir()
    walk, failed, skipped, start = Walk(root, clone, root / "logs"), [], 0, time.time()
    where = walk.shell("python -c 'import kslm; print(kslm.__file__)'", 0)[1].strip()
    if not where.startswith(str(clone)):  # the clone's code runs, not an installed kslm
        return print(f"readme walkthrough: kslm imports from {where!r}, not the clone {clone}", file=sys.stderr) or 1
    print(f"readme walkthrough: {len(steps)} commands of README.md at {head[:12]}"
          f"{' + working tree' if args.working_tree else ''}, in {clone}")
    for n, step in enumerate(steps, 1):
        first = step.command.splitlines()[0]
        if step.rule.action == "skip":
            skipped += 1
            print(f"[{n:2d}] skip          {first}\n       ({step.rule.name}: {step.rule.why})", flush=True)
            continue
        t = time.time()
        command, why = walk.run(step, n)
        status = "ok  " if not why else "FAIL"
        print(f"[{n:2d}] {status} {time.time() - t:6.1f}s  {command.splitlines()[0]}", flush=True)
        if why:
            failed.append(n)
            print(f"       README.md:{step.line}: {why} (log: {root}/logs/{n:02d}.log)", flush=True)
    ran = len(steps) - skipped
    print(f"readme walkthrough: {ran - len(failed)}/{ran} ok, {skipped} skipped (named rules), "
          f"{len(failed)} FAIL{' ' + str(failed) if failed else ''}; {(time.time() - start) / 60:.1f} min")
    if failed or args.keep:
        print(f"readme walkthrough: kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

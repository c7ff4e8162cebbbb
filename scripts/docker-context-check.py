#!/usr/bin/env python3
"""Builds eds-proxy from exactly what Docker would send as the build context (no Docker needed).

1. Assembles the context of ./Dockerfile in a temporary directory: the repository filtered by
   .dockerignore with docker-py's own implementation of Docker's ignore rules
   (`docker.utils.build.exclude_paths`: the PatternMatcher ported from moby, `!` exceptions and
   `**` included; PyPI package `docker`, installed by scripts/test.sh). Hand-written glob code
   would be a second reading of the rules, not Docker's.
2. Replays the `build` stage of the Dockerfile in a scratch root: `WORKDIR`, `ARG` defaults
   (`--build-arg NAME=VALUE` overrides), every `COPY` from the context (a source missing from the
   context fails, as it does in Docker) and every `RUN` that calls cargo, verbatim, with its
   `--mount=type=cache` targets inside the stage pointed at a persistent cache directory
   (default target/docker-context-check/cache: only the crate itself is rebuilt on a warm
   cache, the dependencies are not). `RUN`s that only install system packages (apt-get) are
   listed and skipped: the test machine has those packages (scripts/test.sh installs them).
3. Checks that every `COPY --from=build` of a later stage finds its file, and runs the binary:
   `--version`, `health --help`, and `dev pki` must be an unknown subcommand with the default
   production FEATURES.

4. `--unoptimised` (what scripts/test.sh passes, to keep CI well under its time budget): the same
   command in the same context, with the release profile's optimisation turned off through
   cargo's own `CARGO_PROFILE_RELEASE_*` environment (opt-level 0, no debug info, 256 codegen
   units). Which files the build needs does not depend on the optimisation level, so a file
   missing from the context fails either way; the optimised build is what Docker runs.

Usage: docker-context-check.py [--build-arg NAME=VALUE]... [--cache DIR] [--keep] [--unoptimised]
Prints one line per step and ends with "N passed, N failed".
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerignore_patterns(path):
    # Docker's (and docker-py's process_dockerignore) reading of the file: one pattern per
    # line, surrounding blanks trimmed, empty lines and lines starting with '#' ignored.
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [l for l in (line.strip() for line in f.read().splitlines()) if l and not l.startswith("#")]


def assemble_context(dest):
    from docker.utils.build import exclude_paths  # pylint: disable=import-outside-toplevel

    patterns = dockerignore_patterns(os.path.join(ROOT, ".dockerignore"))
    included = exclude_paths(ROOT, patterns, dockerfile="Dockerfile")
    files = 0
    for rel in sorted(included):
        src = os.path.join(ROOT, rel)
        out = os.path.join(dest, rel)
        if os.path.isdir(src) and not os.path.islink(src):
            os.makedirs(out, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copy2(src, out, follow_symlinks=False)
            files += 1
    return files


def instructions(dockerfile):
    """(keyword, arguments) per instruction: continuation lines joined, comments dropped."""
    out, current = [], ""
    with open(dockerfile, encoding="utf-8") as f:
        for raw in f.read().splitlines():
            line = raw.strip()
            if not current and (not line or line.startswith("#")):
                continue
            if current and line.startswith("#"):
                continue  # a comment inside a continued instruction
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            current += line
            keyword, _, rest = current.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
            current = ""
    return out


def expand(text, env):
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def stages(instrs):
    """Global ARG defaults and {stage name: [instructions]} in order."""
    global_args, result, name = {}, {}, None
    for kw, rest in instrs:
        if kw == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest, re.IGNORECASE)
            name = (m.group(2) or f"stage{len(result)}") if m else f"stage{len(result)}"
            result[name] = []
        elif name is None:
            if kw == "ARG":
                k, _, v = rest.partition("=")
                global_args[k] = v
        else:
            result[name].append((kw, rest))
    return global_args, result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-arg", action="append", default=[])
    ap.add_argument("--cache", default=os.path.join(ROOT, "target", "docker-context-check", "cache"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--unoptimised", action="store_true")
    args = ap.parse_args()
    passed = failed = 0

    def ok(msg):
        nonlocal passed
        passed += 1
        print(f"ok   - {msg}", flush=True)

    def bad(msg):
        nonlocal failed
        failed += 1
        print(f"FAIL - {msg}", flush=True)

    build_args = dict(a.split("=", 1) for a in args.build_arg)
    tmp = tempfile.mkdtemp(prefix="eds-proxy-docker-context.")
    try:
        context = os.path.join(tmp, "context")
        os.makedirs(context)
        n = assemble_context(context)
        ok(f"build context assembled per .dockerignore: {n} files in {context}")
        for needed in ("Dockerfile", "Cargo.toml", "Cargo.lock", "src/main.rs"):
            if not os.path.exists(os.path.join(context, needed)):
                bad(f"{needed} is not in the build context")
        for unwanted in ("target", "demo-run", "config/dev", "hapi-compose/proxy/dev", ".git"):
            if os.path.exists(os.path.join(context, unwanted)):
                bad(f"{unwanted} is in the build context (.dockerignore must leave it out)")

        global_args, st = stages(instructions(os.path.join(context, "Dockerfile")))
        if "build" not in st:
            bad("the Dockerfile has no stage named 'build'")
            return 1
        env = dict(os.environ)
        # The builder's environment has none of the host's cargo redirections.
        for var in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"):
            env.pop(var, None)
        env.update({k: build_args.get(k, v) for k, v in global_args.items()})
        if args.unoptimised:
            env.update({
                "CARGO_PROFILE_RELEASE_OPT_LEVEL": "0",
                "CARGO_PROFILE_RELEASE_DEBUG": "false",
                "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "256",
            })
            print("note - --unoptimised: release profile with opt-level 0 (same command, same context)")
        stage_root = os.path.join(tmp, "stage")
        workdir = "/"
        ran = 0
        os.makedirs(args.cache, exist_ok=True)
        for kw, rest in st["build"]:
            if kw == "WORKDIR":
                workdir = os.path.join(workdir, expand(rest, env))
                os.makedirs(stage_root + workdir, exist_ok=True)
            elif kw == "ARG":
                k, _, v = rest.partition("=")
                env[k] = build_args.get(k, v)
            elif kw == "ENV":
                k, _, v = rest.partition("=")
                env[k] = expand(v.strip('"'), env)
            elif kw == "COPY":
                words = [w for w in shlex.split(rest) if not w.startswith("--")]
                if any(w.startswith("--from") for w in shlex.split(rest)):
                    continue
                *sources, dest = words
                dest_abs = stage_root + os.path.join(workdir, dest)
                for s in sources:
                    src = os.path.normpath(os.path.join(context, s))
                    if not os.path.exists(src):
                        bad(f"COPY {s}: not in the build context (Docker fails the same way)")
                        return 1
                    if os.path.isdir(src):
                        shutil.copytree(src, dest_abs, dirs_exist_ok=True, symlinks=True)
                    else:
                        target = os.path.join(dest_abs, os.path.basename(s)) if dest.endswith("/") else dest_abs
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        shutil.copy2(src, target)
                ok(f"COPY {' '.join(sources)} {dest}")
            elif kw == "RUN":
                mounts = re.findall(r"--mount=(\S+)", rest)
                command = re.sub(r"--mount=\S+\s*", "", rest).strip()
                if "cargo" not in command:
                    print(f"skip - RUN {command[:70]}… (system packages: installed on this machine)")
                    continue
                for m in mounts:
                    opts = dict(o.split("=", 1) for o in m.split(",") if "=" in o)
                    tgt = opts.get("target", "")
                    if opts.get("type") == "cache" and tgt.startswith(workdir.rstrip("/") + "/"):
                        link = stage_root + tgt
                        os.makedirs(os.path.dirname(link), exist_ok=True)
                        if os.path.lexists(link):
                            shutil.rmtree(link) if os.path.isdir(link) and not os.path.islink(link) else os.remove(link)
                        os.symlink(args.cache, link)
                print(f"run  - RUN {command}  (FEATURES={env.get('FEATURES', '')}, cache {args.cache})", flush=True)
                r = subprocess.run(["sh", "-c", "set -e; " + command], cwd=stage_root + workdir, env=env)
                if r.returncode != 0:
                    bad(f"RUN {command}: exit {r.returncode}")
                    return 1
                ran += 1
                ok(f"RUN {command.split('&&')[0].strip()} succeeded in the assembled context")
        if ran == 0:
            bad("the build stage runs no cargo command")

        # Later stages take files out of the build stage: they must be there.
        binary = None
        for name, body in st.items():
            for kw, rest in body:
                if kw == "COPY" and "--from=build" in rest:
                    words = [w for w in shlex.split(rest) if not w.startswith("--")]
                    src = stage_root + words[0]
                    if os.path.isfile(src):
                        ok(f"stage {name}: COPY --from=build {words[0]} exists")
                        binary = binary or src
                    else:
                        bad(f"stage {name}: COPY --from=build {words[0]}: not produced by the build stage")
        if binary:
            v = subprocess.run([binary, "--version"], capture_output=True, text=True)
            if v.returncode == 0 and v.stdout.startswith("eds-proxy "):
                ok(f"the image's binary runs: {v.stdout.strip()}")
            else:
                bad(f"{binary} --version: exit {v.returncode}")
            h = subprocess.run([binary, "health", "--help"], capture_output=True, text=True)
            if h.returncode == 0 and "--url" in h.stdout:
                ok("the image's binary has the `health` subcommand its HEALTHCHECK runs")
            else:
                bad(f"{binary} health --help: exit {h.returncode}")
            if "dev" not in env.get("FEATURES", "").split(","):
                d = subprocess.run([binary, "dev", "pki", "--out", os.path.join(tmp, "pki")], capture_output=True, text=True)
                if d.returncode == 2 and "unrecognized subcommand 'dev'" in d.stderr:
                    ok("production image: `dev` is an unrecognized subcommand (exit 2)")
                else:
                    bad(f"production image ran `dev pki` (exit {d.returncode})")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"docker-context-check: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

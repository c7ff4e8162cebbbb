#!/usr/bin/env python3
"""Checks the deployment files offline (no Docker engine, no cluster needed).

Compose (hapi-compose/docker-compose.yml):
  * valid against the Compose Specification's JSON schema (hapi-compose/schema/
    compose-spec.json, the schema `docker compose` itself validates with; Debian's only
    packaged Compose is v1.29, which predates the current spec and refuses `name:`);
  * start order by health: every `depends_on` names a service, and a `service_healthy`
    condition names one with a healthcheck;
  * every image pinned by a tag (not `latest`) and named once; the eds-proxy services are
    built from ../Dockerfile, the production one without `dev`;
  * the proxy's stop_grace_period = [server].grace_period_seconds of proxy/eds-proxy.toml + 15 s,
    and its healthcheck asks the admin port that file configures;
  * every bind-mounted host path exists (proxy/dev is generated: see proxy/README.md).

Kubernetes (kubernetes/*/*.yaml):
  * valid against the Kubernetes OpenAPI schemas shipped in the PyPI package
    `kubernetes-validate`, strict (unknown fields fail), for the oldest and newest supported
    Kubernetes versions;
  * for every pod running eds-proxy: terminationGracePeriodSeconds = preStop sleep +
    grace_period_seconds of its ConfigMap's eds-proxy.toml + 15; readiness /readyz and
    liveness /healthz on the admin port that file configures; the --config path is in a
    mounted ConfigMap; every Secret and ConfigMap it mounts is defined; non-root, read-only
    root file system; resource requests and a memory limit;
  * the own Deployment has >= 2 replicas, a PodDisruptionBudget and a HorizontalPodAutoscaler
    (minReplicas >= 2) that select/target it, and its Service does not publish the admin port;
  * `eds-proxy check-config` accepts every ConfigMap's eds-proxy.toml (its /etc/eds-proxy
    paths laid out in a temporary directory with a development PKI), so the manifests follow
    the configuration schema.

Usage: deploy-check.py [--bin target/debug/eds-proxy]. Ends with "N passed, N failed".
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_DIR = os.path.join(ROOT, "hapi-compose")
K8S_DIR = os.path.join(ROOT, "kubernetes")
# Kubernetes versions validated against: the oldest with the preStop `sleep` action on by
# default (beta in 1.30) and the newest the installed kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", None]
# Seconds beyond [server].grace_period_seconds before a container is killed: Pingora's runtime
# shutdown (at most 10 s) and 5 s of slack.
SHUTDOWN_SLACK = 15

passed = failed = 0


def ok(msg):
    global passed
    passed += 1
    print(f"ok   - {msg}", flush=True)


def bad(msg):
    global failed
    failed += 1
    print(f"FAIL - {msg}", flush=True)


def check(cond, msg, why=""):
    if cond:
        ok(msg)
    else:
        bad(msg + (f": {why}" if why else ""))


def seconds(duration):
    """Compose duration ("45s", "1m30s", 45) in seconds."""
    if isinstance(duration, (int, float)):
        return duration
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(duration)):
        total += float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def port_of(address):
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------------------------------------ compose
def compose():
    path = os.path.join(COMPOSE_DIR, "docker-compose.yml")
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    with open(os.path.join(COMPOSE_DIR, "schema", "compose-spec.json"), encoding="utf-8") as f:
        schema = json.load(f)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    check(not errors, "compose: docker-compose.yml is valid against the compose-spec schema",
          "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
    services = doc.get("services", {})
    expected = {"postgres", "hapi", "hapi-init", "eds-proxy", "dev-issuer", "prometheus", "grafana"}
    check(expected <= set(services), "compose: has " + ", ".join(sorted(expected)),
          f"missing {sorted(expected - set(services))}")

    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                bad(f"compose: {name} depends on unknown service {dep}")
            elif spec.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                bad(f"compose: {name} waits for {dep} to be healthy, but {dep} has no healthcheck")
    ok("compose: every depends_on names a service; every service_healthy target has a healthcheck")
    proxy_deps = services.get("eds-proxy", {}).get("depends_on", {})
    check(proxy_deps.get("hapi-init", {}).get("condition") == "service_completed_successfully",
          "compose: eds-proxy starts after hapi-init found HAPI answering and stored the SearchParameters")
    check(services.get("grafana", {}).get("depends_on", {}).get("prometheus", {}).get("condition")
          == "service_healthy", "compose: grafana starts after prometheus is healthy")
    check(services.get("hapi", {}).get("depends_on", {}).get("postgres", {}).get("condition")
          == "service_healthy", "compose: hapi starts after postgres is healthy")

    images = [svc["image"] for svc in services.values() if "image" in svc and "build" not in svc]
    unpinned = [i for i in images if ":" not in i.rsplit("/", 1)[-1] or i.endswith(":latest")]
    check(not unpinned, "compose: every third-party image is pinned by a tag", str(unpinned))
    with open(path, encoding="utf-8") as f:
        text = f.read()
    repeated = [i for i in set(images) if text.count(i) != 1]
    check(not repeated, "compose: every image tag is written once (x-images)", str(repeated))
    for name in ("eds-proxy", "dev-issuer"):
        build = services.get(name, {}).get("build", {})
        check(build.get("context") == ".." and build.get("dockerfile") == "Dockerfile",
              f"compose: {name} is built from ../Dockerfile")
    check("dev" not in str(services["eds-proxy"]["build"].get("args", {}).get("FEATURES", "server")),
          "compose: eds-proxy runs the production build (no `dev` feature)")

    with open(os.path.join(COMPOSE_DIR, "proxy", "eds-proxy.toml"), "rb") as f:
        proxy_toml = tomllib.load(f)
    grace = proxy_toml.get("server", {}).get("grace_period_seconds", 30)
    stop = seconds(services["eds-proxy"].get("stop_grace_period", "10s"))
    check(stop == grace + SHUTDOWN_SLACK,
          f"compose: eds-proxy stop_grace_period {stop:g}s = grace_period_seconds {grace} + {SHUTDOWN_SLACK}")
    admin_port = port_of(proxy_toml["admin"]["address"])
    test = " ".join(services["eds-proxy"].get("healthcheck", {}).get("test", []))
    check(f"http://127.0.0.1:{admin_port}/readyz" in test,
          f"compose: eds-proxy healthcheck asks /readyz on the admin port {admin_port}", test)
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    check(f"http://127.0.0.1:{admin_port}/readyz" in dockerfile,
          f"Dockerfile: HEALTHCHECK asks /readyz on the admin port {admin_port}")
    published = {n for n, s in services.items() if s.get("ports")}
    check(not published & {"hapi", "postgres", "prometheus"},
          "compose: HAPI, PostgreSQL and Prometheus publish no port", str(published))

    # The image's ENTRYPOINT is the binary: a compose `command` holds only its arguments.
    if re.search(r'^ENTRYPOINT \["/usr/local/bin/eds-proxy"\]', dockerfile, re.MULTILINE):
        wrong = [n for n in ("eds-proxy", "dev-issuer") if services[n].get("command", [""])[0] == "eds-proxy"]
        check(not wrong, "compose: commands of the eds-proxy image hold arguments only (ENTRYPOINT is the binary)",
              str(wrong))
    # What the other files say about the proxy agrees with its configuration.
    with open(os.path.join(COMPOSE_DIR, "prometheus.yml"), encoding="utf-8") as f:
        prom = yaml.safe_load(f)
    targets = [t for job in prom.get("scrape_configs", []) for sc in job.get("static_configs", [])
               for t in sc.get("targets", [])]
    check(f"eds-proxy:{admin_port}" in targets,
          f"compose: prometheus.yml scrapes eds-proxy:{admin_port} (the admin listener)", str(targets))
    with open(os.path.join(COMPOSE_DIR, "proxy", "dev-issuer.toml"), "rb") as f:
        issuer = tomllib.load(f)
    check(issuer.get("issuer") == proxy_toml["token"]["issuer"]
          and proxy_toml["token"]["audience"] == [issuer.get("audience")],
          "compose: the dev issuer's issuer and audience are the proxy's [token] issuer and audience")
    with open(os.path.join(COMPOSE_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    undocumented = [i for i in images if f"`{i}`" not in readme]
    check(not undocumented, "compose: hapi-compose/README.md names every image as pinned", str(undocumented))

    missing = []
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")) and not os.path.exists(os.path.join(COMPOSE_DIR, src)):
                missing.append(f"{name}: {src}")
    check(not missing, "compose: every bind-mounted path exists", str(missing))


# ------------------------------------------------------------------------------ kubernetes
def k8s_files():
    """The manifests of both shapes (kubernetes/<shape>/*.yaml, what `kubectl apply -f
    kubernetes/<shape>/` applies) and the examples beside them (kubernetes/*.yaml)."""
    return sorted(glob.glob(os.path.join(K8S_DIR, "*", "*.yaml"))) + sorted(glob.glob(os.path.join(K8S_DIR, "*.yaml")))


def k8s_docs():
    docs = []
    for path in k8s_files():
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((os.path.relpath(path, ROOT), doc))
    return docs


def check_config(binary, toml_text, files, label):
    """eds-proxy check-config on toml_text with its /etc/eds-proxy/ paths in a temp dir."""
    tmp = tempfile.mkdtemp(prefix="eds-proxy-k8s-config.")
    try:
        pki = os.path.join(tmp, "pki")
        subprocess.run([binary, "dev", "pki", "--out", pki], check=True, capture_output=True)
        root = os.path.join(tmp, "etc")
        text = toml_text.replace("/etc/eds-proxy/", root + "/")
        stand_ins = {"server.crt": "server.crt", "server.key": "server.key", "client-ca.crt": "ca.crt",
                     "page-secret": "page-secret"}
        for path in re.findall(re.escape(root) + r"/[^\"]+", text):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            base = os.path.basename(path)
            if base in files:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(files[base])
            elif base in stand_ins:
                shutil.copy(os.path.join(pki, stand_ins[base]), path)
        cfg = os.path.join(root, "config", "eds-proxy.toml")
        os.makedirs(os.path.dirname(cfg), exist_ok=True)
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(text)
        r = subprocess.run([binary, "check-config", cfg], capture_output=True, text=True)
        check(r.returncode == 0, f"{label}: eds-proxy check-config accepts its eds-proxy.toml",
              r.stdout.strip().replace(root, "/etc/eds-proxy"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kubernetes(binary):
    files = k8s_files()
    check({os.path.basename(os.path.dirname(f)) for f in files} - {"kubernetes"} == {"deployment", "sidecar"},
          "kubernetes: both shapes present (deployment/, sidecar/)")
    for version in K8S_VERSIONS:
        cmd = ["kubernetes-validate", "--strict", "--quiet"] + (["-k", version] if version else []) + files
        r = subprocess.run(cmd, capture_output=True, text=True)
        check(r.returncode == 0,
              f"kubernetes: {len(files)} files valid (strict) against the schemas of Kubernetes {version or 'latest shipped'}",
              (r.stdout + r.stderr).strip()[:2000])

    docs = k8s_docs()
    by_kind = {}
    for path, d in docs:
        by_kind.setdefault(d["kind"], []).append((path, d))
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for _, d in by_kind.get("Secret", [])}
    # `kubectl apply -f kubernetes/<shape>/` applies every file of the folder: an example Secret
    # there would replace the operator's real certificates and page secret with placeholders.
    applied = [f"{path} {d['metadata']['name']}" for path, d in by_kind.get("Secret", [])
               if os.path.dirname(path) != "kubernetes"]
    check(not applied, "kubernetes: no Secret in a folder that `kubectl apply -f kubernetes/<shape>/` applies",
          str(applied))

    for path, dep in by_kind.get("Deployment", []):
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        name = dep["metadata"]["name"]
        label = f"{path} {name}"
        proxies = [c for c in pod["containers"] if c["name"] == "eds-proxy"]
        if not proxies:
            continue
        c = proxies[0]
        config_path = c["args"][c["args"].index("--config") + 1]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        cm_volume = volumes.get(mounts.get(os.path.dirname(config_path), ""), {})
        cm_name = cm_volume.get("configMap", {}).get("name")
        cm = configmaps.get(cm_name)
        if not cm:
            bad(f"{label}: --config {config_path} is not in a mounted, defined ConfigMap")
            continue
        ok(f"{label}: --config {config_path} comes from ConfigMap {cm_name}")
        toml_text = cm["data"][os.path.basename(config_path)]
        cfg = tomllib.loads(toml_text)
        grace = cfg.get("server", {}).get("grace_period_seconds", 30)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        check(tgps == pre_stop + grace + SHUTDOWN_SLACK,
              f"{label}: terminationGracePeriodSeconds {tgps} = preStop {pre_stop} + grace {grace} + {SHUTDOWN_SLACK}")
        for other in pod["containers"]:
            if other is not c:
                sleep = other.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                check(sleep >= pre_stop + grace and sleep < tgps,
                      f"{label}: container {other['name']} outlives the proxy's drain (preStop sleep {sleep} s)")
        admin = port_of(cfg["admin"]["address"])
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet", {})
            port = ports.get(get.get("port"), get.get("port"))
            check(get.get("path") == want and port == admin,
                  f"{label}: {probe} GET {want} on the admin port {admin}", str(get))
        check(ports.get("fhir") == port_of(cfg["listen"]["address"]),
              f"{label}: port 'fhir' is the listener of its config")
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(admin),
              f"{label}: Prometheus scrape annotations name the admin port")
        fs_group = pod.get("securityContext", {}).get("fsGroup")
        for v in volumes.values():
            if "secret" in v:
                check(v["secret"]["secretName"] in secrets or v["secret"]["secretName"].startswith("hapi-"),
                      f"{label}: Secret {v['secret']['secretName']} is defined in the manifests")
                # Secret files are root-owned: user 65532 reads them through fsGroup (or "other").
                mode = v["secret"].get("defaultMode", 0o644)
                check((fs_group == 65532 and mode & 0o040) or mode & 0o004,
                      f"{label}: user 65532 can read Secret {v['secret']['secretName']} (mode {mode:o}, fsGroup {fs_group})")
        sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
            image_user = re.search(r"^USER (\d+)", f.read(), re.MULTILINE)
        check(image_user and int(image_user.group(1)) == sc.get("runAsUser"),
              f"{label}: runAsUser is the image's USER ({image_user and image_user.group(1)})")
        check(sc.get("runAsNonRoot") and sc.get("runAsUser") == 65532 and sc.get("readOnlyRootFilesystem")
              and sc.get("allowPrivilegeEscalation") is False,
              f"{label}: runs as 65532 (the image's user), non-root, read-only root, no privilege escalation")
        res = c.get("resources", {})
        check("cpu" in res.get("requests", {}) and "memory" in res.get("requests", {})
              and "memory" in res.get("limits", {}), f"{label}: resource requests and a memory limit")
        check(dep["spec"].get("replicas", 1) >= 2, f"{label}: at least 2 replicas")
        for kind in ("PodDisruptionBudget",):
            sel = [d for _, d in by_kind.get(kind, [])
                   if d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            check(bool(sel), f"{label}: a {kind} selects its pods")
        if name == "eds-proxy":
            hpa = [d for _, d in by_kind.get("HorizontalPodAutoscaler", [])
                   if d["spec"]["scaleTargetRef"]["name"] == name]
            check(bool(hpa) and hpa[0]["spec"]["minReplicas"] >= 2,
                  f"{label}: a HorizontalPodAutoscaler targets it with minReplicas >= 2")
        for _, svc in by_kind.get("Service", []):
            if svc["spec"]["selector"].items() <= labels.items():
                targets = {p["targetPort"] for p in svc["spec"]["ports"]}
                check(targets == {"fhir"}, f"{label}: Service {svc['metadata']['name']} publishes only the FHIR port",
                      str(targets))
        if binary:
            check_config(binary, toml_text, dict(cm["data"]), label)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "eds-proxy"))
    args = ap.parse_args()
    compose()
    binary = args.bin if os.path.exists(args.bin) else None
    if not binary:
        bad(f"{args.bin} not found: build it first (cargo build)")
    kubernetes(binary)
    print(f"deploy-check: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

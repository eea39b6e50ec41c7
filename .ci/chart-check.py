#!/usr/bin/env python3
"""Renders charts/etjanstekort-gateway without a helm binary (helm-python-sdk: Helm's own engine)
for the default values and for ci/all-on.yaml, then, for each:

- lints the chart (strict) and checks the values against values.schema.json;
- validates every rendered object against the Kubernetes schemas (kubernetes-validate, strict);
- checks what the chart promises (non-root, read-only root fs, no capabilities, probes on the
  admin listener, no Secret rendered, the migration hook, the alerts of docs/observability.md);
- feeds the rendered ConfigMap's TOML, with the Deployment's environment, to the real binary's
  `check-config`, and the container's arguments to the binary's parser;
- writes the manifests to OUT/<case>/ for checkov.

Usage: chart-check.py GATEWAY_BINARY OUT_DIR
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "etjanstekort-gateway"
KUBERNETES_VERSION = "1.37.0"
RELEASE, NAMESPACE = "etk", "etjanstekort"
CASES = {"defaults": None, "all-on": CHART / "ci" / "all-on.yaml"}
# Kinds of the Prometheus Operator: no schema in kubernetes-validate; checked below by hand.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Stand-ins for the values of referenced Secrets when the configuration is checked.
SECRET_STAND_INS = {
    "ETK_DATABASE__URL": "postgres://gateway:stand-in@db.example.se/gateway",
    "ETK_KIV__BIND__PASSWORD": "stand-in",
    "ETK_SMTP__LOGIN__PASSWORD": "stand-in",
}

# Values values.schema.json must refuse (a schema that lets them through fails the check).
SCHEMA_REFUSES = [
    {"replicaCount": 0},
    {"unknownKey": 1},
    {"secrets": {"database": {"name": "Not_A_Name"}}},
    {"otel": {"protocol": "udp"}},
    {"image": {"digest": "latest"}},
    {"ports": {"grpc": 70000}},
]

# Values the chart must refuse to render, and what its message names.
RENDER_REFUSES = [
    ({"terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds"),
    ({"config": {"server": {"shutdown_grace": "1m"}}}, "terminationGracePeriodSeconds"),
    ({"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds"),
    ({"config": {"server": {"drain_delay": "20s"}}}, "terminationGracePeriodSeconds"),
]

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def render(values_file: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    values = helm.values_from_yaml(values_file.read_text()) if values_file else {}
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBERNETES_VERSION}")
    for m in report["messages"]:
        # Severity 1 is "info" (e.g. "icon is recommended"); warnings and errors fail.
        check(m["severity"] < 2, f"helm lint: {m}")
    check(not report["errors"], f"helm lint: {report['errors']}")
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                objects.append(doc)
    return objects, chart.merge_values(values)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind)
             if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind} (component {component}), found {len(found)}")
    return found[0]


def docs_alerts() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "observability.md").read_text()
    section = text.split("### Example alerting rules", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "docs/observability.md has no alerting rules block"
    groups = yaml.safe_load(block.group(1))["groups"]
    return [rule for g in groups for rule in g["rules"]]


def pod_checks(case: str, kind: str, pod: dict[str, Any]) -> None:
    spec = pod["spec"]
    where = f"{case}: {kind}"
    check(spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True, f"{where}/{c['name']}: runAsNonRoot")
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: read-only root fs")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: privilege escalation")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: capabilities")
        check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}/{c['name']}: seccomp")
        check("limits" in c.get("resources", {}), f"{where}/{c['name']}: resource limits")
        for mount in c.get("volumeMounts", []):
            check("subPath" not in mount, f"{where}/{c['name']}: subPath blocks Secret updates")
        for env in c.get("env", []):
            # Secret values come from Secrets, never from values.yaml.
            if env["name"] in SECRET_STAND_INS:
                check("secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} not from a Secret")


def config_check(case: str, binary: Path, toml: str, container: dict[str, Any], out: Path) -> None:
    """The rendered configuration, with the container's environment, through the real loader."""
    path = out / f"{case}-gateway.toml"
    path.write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETK_", "OTEL_"))}
    for e in container.get("env", []):
        if e["name"] == "ETK_CONFIG":
            env["ETK_CONFIG"] = str(path)
        elif "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = SECRET_STAND_INS.get(e["name"], "stand-in")
    check("ETK_CONFIG" in env, f"{case}: the container does not name its configuration (ETK_CONFIG)")
    done = subprocess.run([str(binary), "check-config"], env=env, capture_output=True, text=True)
    check(done.returncode == 0,
          f"{case}: the rendered configuration is refused by the gateway: {done.stdout}{done.stderr}")
    # The container's arguments are ones the binary accepts.
    args = container.get("args", [])
    done = subprocess.run([str(binary), *args, "--help"], env=env, capture_output=True, text=True)
    check(done.returncode == 0, f"{case}: the gateway refuses the arguments {args}: {done.stderr}")


def validate(case: str, objects: list[dict[str, Any]]) -> None:
    for o in objects:
        name = f"{case}: {o['kind']}/{o['metadata']['name']} ({o['__template']})"
        check(o["metadata"].get("namespace") == NAMESPACE, f"{name}: no namespace")
        if o["kind"] in CUSTOM_KINDS:
            continue
        body = {k: v for k, v in o.items() if k != "__template"}
        try:
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            failures.append(f"{name}: {e.message}")


def chart_checks(case: str, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    check(not by_kind(objects, "Secret"), f"{case}: the chart renders a Secret")
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    if values["autoscaling"]["enabled"]:
        check("replicas" not in deployment["spec"], f"{case}: replicas set beside an HPA")
        check(len(by_kind(objects, "HorizontalPodAutoscaler")) == 1, f"{case}: no HPA")
    else:
        check(deployment["spec"]["replicas"] >= 2, f"{case}: fewer than two replicas")
    check(bool(pod["spec"].get("topologySpreadConstraints")), f"{case}: no topology spread")
    pod_checks(case, "Deployment", pod)
    gateway = pod["spec"]["containers"][0]
    check(gateway["args"][0] == "serve", f"{case}: the Deployment does not serve")
    for probe, path in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/readyz")]:
        get = gateway.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == "admin", f"{case}: {probe} not on admin {path}")
    services = {s["spec"]["ports"][0]["targetPort"] for s in by_kind(objects, "Service")}
    check(services == {"grpc", "admin"}, f"{case}: Services for {services}, not grpc and admin apart")
    check(len(by_kind(objects, "PodDisruptionBudget")) == 1, f"{case}: no PodDisruptionBudget")
    check(len(by_kind(objects, "NetworkPolicy")) == 1 + bool(values["migrations"]["job"]["enabled"]),
          f"{case}: not one NetworkPolicy for the gateway and one for the migration Job")
    if case == "all-on":
        # The ports the configuration names, and only those (kiv.url :636, smtp.port 587,
        # otel.endpoint :4317), beside DNS, PostgreSQL and the extra rule.
        ports = {p["port"] for r in one(objects, "NetworkPolicy")["spec"]["egress"] for p in r["ports"]}
        check(ports == {53, 5432, 636, 587, 4317, 80}, f"{case}: gateway egress ports {sorted(ports)}")

    config = one(objects, "ConfigMap")["data"]["gateway.toml"]
    job = one(objects, "Job", "migrate")
    annotations = job["metadata"]["annotations"]
    check(annotations.get("helm.sh/hook") == "pre-install,pre-upgrade", f"{case}: migrate Job hook")
    check(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], f"{case}: Job args")
    pod_checks(case, "Job", job["spec"]["template"])
    job_config = one(objects, "ConfigMap", "migrate")
    check(job_config["data"]["gateway.toml"] == config, f"{case}: the Job's configuration differs")
    check(int(job_config["metadata"]["annotations"]["helm.sh/hook-weight"])
          < int(annotations["helm.sh/hook-weight"]), f"{case}: the Job's ConfigMap comes after it")
    # The same environment but for the database URL: the Job may migrate as another role.
    job_env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    url = "ETK_DATABASE__URL"
    check([e for e in job_env if e["name"] != url] == [e for e in gateway["env"] if e["name"] != url],
          f"{case}: the Job's environment differs from the gateway's beyond the database URL")
    secrets = values["secrets"]
    runtime_secret = secrets["database"]["name"] or f"{RELEASE}-etjanstekort-gateway-database"
    migration_secret = secrets["migrationDatabase"]["name"] or runtime_secret

    def url_secret(env: list[dict[str, Any]]) -> str:
        return next(e for e in env if e["name"] == url)["valueFrom"]["secretKeyRef"]["name"]

    check(url_secret(gateway["env"]) == runtime_secret, f"{case}: the pods' database Secret")
    check(url_secret(job_env) == migration_secret, f"{case}: the Job's database Secret")

    # Nothing that selects the gateway's pods selects the Job's.
    job_labels = job["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    pod_labels = pod["metadata"]["labels"]
    selectors = {"Deployment": deployment["spec"]["selector"]["matchLabels"],
                 "PodDisruptionBudget": one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 "NetworkPolicy": one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]}
    for s in by_kind(objects, "Service"):
        selectors[f"Service {s['metadata']['name']}"] = s["spec"]["selector"]
    for i, t in enumerate(pod["spec"].get("topologySpreadConstraints", [])):
        selectors[f"topology spread {i}"] = t["labelSelector"]["matchLabels"]
    for what, selector in selectors.items():
        check(selects(selector, pod_labels), f"{case}: the {what} misses the gateway's pods")
        check(not selects(selector, job_labels), f"{case}: the {what} selects the migration Job's pod")

    # Hooks: replaced by the next run; the Job's helpers also go once every hook succeeded.
    for o in objects:
        notes = o["metadata"].get("annotations", {})
        if "helm.sh/hook" not in notes:
            continue
        policy = notes.get("helm.sh/hook-delete-policy", "").split(",")
        check("before-hook-creation" in policy, f"{case}: hook {o['kind']} not replaced on the next run")
        check("hook-succeeded" in policy, f"{case}: hook {o['kind']} stays after success")

    if values["networkPolicy"]["enabled"]:
        job_np = one(objects, "NetworkPolicy", "migrate")
        check(selects(job_np["spec"]["podSelector"]["matchLabels"], job_labels)
              and not selects(job_np["spec"]["podSelector"]["matchLabels"], pod_labels),
              f"{case}: the Job's NetworkPolicy selects the wrong pods")
        check(not job_np["spec"].get("ingress"), f"{case}: the Job's pod takes ingress")
        ports = {p["port"] for r in job_np["spec"]["egress"] for p in r["ports"]}
        expected = {p["port"] for k in ("dns", "postgresql") for p in values["networkPolicy"]["egress"][k]["ports"]}
        check(ports == expected, f"{case}: the Job's egress ports {ports}, not {expected}")

    if values["serviceMonitor"]["enabled"]:
        sm = one(objects, "ServiceMonitor")
        admin = one(objects, "Service", "admin")
        endpoint = sm["spec"]["endpoints"][0]
        check(endpoint["port"] == admin["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics",
              f"{case}: the ServiceMonitor misses the admin port")
        selector = sm["spec"]["selector"]["matchLabels"]
        check(all(admin["metadata"]["labels"].get(k) == v for k, v in selector.items()),
              f"{case}: the ServiceMonitor selects no admin Service")
    if values["prometheusRule"]["enabled"]:
        rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
        check(rules == docs_alerts(), f"{case}: the PrometheusRule differs from docs/observability.md")
    print(f"{case}: {len(objects)} objects: {', '.join(kinds)}")


def main() -> int:
    binary, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    print(f"Helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), Kubernetes {KUBERNETES_VERSION}")
    chart = helm.Chart.load(CHART)
    for bad in SCHEMA_REFUSES:
        try:
            chart.validate_schema(bad)
            failures.append(f"values.schema.json accepts {bad}")
        except helm.HelmValuesError:
            pass
    for bad, names in RENDER_REFUSES:
        try:
            chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
            failures.append(f"the chart renders {bad}")
        except Exception as e:  # noqa: BLE001 - whatever the engine raises, the message counts
            check(names in str(e), f"the chart refuses {bad} without naming {names}: {e}")
    for case, values_file in CASES.items():
        objects, values = render(values_file)
        target = out / case
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.yaml"):
            old.unlink()
        for i, o in enumerate(objects):
            body = {k: v for k, v in o.items() if k != "__template"}
            (target / f"{i:02}-{o['kind'].lower()}-{o['metadata']['name']}.yaml").write_text(
                yaml.safe_dump(body, sort_keys=False))
        validate(case, objects)
        chart_checks(case, objects, values)
        deployment = one(objects, "Deployment")
        config_check(case, binary, one(objects, "ConfigMap")["data"]["gateway.toml"],
                     deployment["spec"]["template"]["spec"]["containers"][0], out)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

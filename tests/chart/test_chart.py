"""The Helm chart, checked with Helm's own engine (helm-python-sdk) and Kubernetes' schemas
(kubernetes-validate), and the objects `phoenix-operator plan` builds for every example.

Run by `scripts/test` after the Rust tests; `PHOENIX_OPERATOR_BIN` names the operator binary.
"""

import json
import os
import pathlib
import re
import subprocess

import helm_python
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "phoenix-operator"
OPERATOR = os.environ.get("PHOENIX_OPERATOR_BIN", str(ROOT / "target" / "debug" / "phoenix-operator"))
# The oldest Kubernetes we support (k8s-openapi's earliest feature) and the newest schemas.
VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
# Kinds whose schemas Kubernetes does not ship (custom resources).
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "PhoenixMemory"}

ALL_ON = {
    "replicaCount": 2,
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
    "dashboard": {"enabled": True},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "extraEnv": [{"name": "RUST_LOG", "value": "debug"}],
    "serviceAccount": {"annotations": {"example.com/role": "operator"}},
}
NAMESPACED = {"watchNamespace": "memories"}


def render(values):
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name="phoenix", namespace="phoenix-system", is_install=True)
    objects = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def test_lint_passes_without_warnings():
    report = helm_python.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", [{}, ALL_ON, NAMESPACED], ids=["defaults", "all-on", "namespaced"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(values, version):
    objects = render(values)
    assert by_kind(objects, "Deployment")
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_optional_features_appear_only_when_enabled():
    default_kinds = {o["kind"] for o in render({})}
    assert "ServiceMonitor" not in default_kinds and "PrometheusRule" not in default_kinds
    all_on = render(ALL_ON)
    kinds = {o["kind"] for o in all_on}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    assert any(o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"] for o in all_on)
    args = by_kind(all_on, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election" in args, "two replicas need leader election"
    assert "--leader-election" not in by_kind(render({}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_dashboard_and_alerts_name_only_metrics_that_exist():
    """Every phoenix_* metric the dashboard and the alerts query is one the code exports."""
    # The node's metric names are constants of the contract crate (node/api).
    exported = (ROOT / "node" / "api" / "src" / "metrics.rs").read_text() + (
        ROOT / "operator" / "src" / "metrics.rs"
    ).read_text()
    all_on = render(ALL_ON)
    dashboard = next(o for o in all_on if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"])
    panels = [json.loads(text)["panels"] for text in dashboard["data"].values()][0]
    queries = [t["expr"] for p in panels for t in p["targets"]]
    rules = by_kind(all_on, "PrometheusRule")[0]["spec"]["groups"]
    queries += [r["expr"] for g in rules for r in g["rules"]]
    names = {n for q in queries for n in re.findall(r"phoenix_(?:node|operator)_[a-z0-9_]+", q)}
    assert len(names) > 8, names
    for name in sorted(names):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f'"{base}"' in exported, f"{name} is not exported by the node or the operator"


def test_the_operator_pod_is_restricted():
    pod = by_kind(render({}), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("values", [{}, ALL_ON, NAMESPACED])
def test_the_operator_accepts_every_flag_the_chart_passes(values):
    container = by_kind(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "run"
    help_text = subprocess.run([OPERATOR, "run", "--help"], check=True, capture_output=True, text=True).stdout
    accepted = set(re.findall(r"--[a-z][a-z-]*", help_text))
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert flag in accepted, f"{flag} is not a flag of `phoenix-operator run`"
    flags = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args[1:] if "=" in a}
    assert flags["--observe-interval-seconds"] == "30"
    assert (flags["--kube-qps"], flags["--kube-burst"]) == ("200", "400")


@pytest.mark.parametrize("bad", [
    {"observe": {"intervalSeconds": 0}},
    {"observe": {"statusRefreshSeconds": 300}},
    {"kubeApi": {"qps": "fast"}},
    {"replicaCount": 0},
    {"bogus": True},
    {"image": {"pullPolicy": "Sometimes"}},
    {"metrics": {"port": 70000}},
    {"concurrency": "eight"},
])
def test_bad_values_are_rejected_by_the_schema(bad):
    with pytest.raises(helm_python.HelmValuesError):
        render(bad)


def operator_rules():
    out = subprocess.run([OPERATOR, "rbac"], check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(out)


def normalise(rules):
    return sorted(
        (tuple(sorted(r["apiGroups"])), tuple(sorted(r["resources"])), tuple(sorted(r["verbs"])))
        for r in rules
    )


@pytest.mark.parametrize("values,kind", [({}, "ClusterRole"), (NAMESPACED, "Role")])
def test_rbac_grants_exactly_what_the_operator_uses(values, kind):
    objects = render(values)
    roles = [o for o in by_kind(objects, kind) if not o["metadata"]["name"].endswith("-leader-election")]
    assert len(roles) == 1
    assert normalise(roles[0]["rules"]) == normalise(operator_rules()["rules"])
    if kind == "Role":
        assert roles[0]["metadata"]["namespace"] == "memories"
        assert not by_kind(objects, "ClusterRole")


def test_the_lease_role_matches_the_operators_lease_rules():
    leases = [o for o in by_kind(render(ALL_ON), "Role") if o["metadata"]["name"].endswith("-leader-election")]
    assert len(leases) == 1
    assert normalise(leases[0]["rules"]) == normalise(operator_rules()["leaseRules"])


def test_the_charts_crd_is_the_generated_one():
    assert (CHART / "crds" / "phoenixmemories.phoenix.dev.yaml").read_text() == (
        ROOT / "crds" / "phoenixmemories.phoenix.dev.yaml"
    ).read_text()


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_the_operator_builds_is_valid_kubernetes(example, version):
    out = subprocess.run(
        [OPERATOR, "plan", "-f", str(ROOT / "examples" / example)], check=True, capture_output=True, text=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(out) if doc]
    # Every child, and the Job an emergency would create.
    assert [o["kind"] for o in objects][-2:] == ["CronJob", "Job"] and len(objects) == 9
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)

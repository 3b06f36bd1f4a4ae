"""Checks that the deployment artefacts agree with the server they deploy:
the Kubernetes manifests (deploy/kubernetes/*.yaml) with the configuration
they mount and Cascade's defaults (config/default.toml), and with the
Dockerfile. Run by the integration test `deploy::manifests_and_image_...`
(kubernetes-validate and hadolint run there too); prints one line per
problem and exits 1 if there is any.

    .venv/bin/python tests/python/check_deploy.py
"""
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


docs = []
for path in sorted((ROOT / "deploy/kubernetes").glob("*.yaml")):
    docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
by_kind = {}
for name, d in docs:
    by_kind.setdefault(d["kind"], []).append(d)


def one(kind, name):
    found = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
    check(len(found) == 1, f"expected one {kind} named {name}, found {len(found)}")
    return found[0] if found else {}


defaults = tomllib.loads((ROOT / "config/default.toml").read_text())
config_map = one("ConfigMap", "cascade-config")
served = tomllib.loads(config_map["data"]["config.toml"])


def setting(section, key):
    return served.get(section, {}).get(key, defaults[section][key])


deployment = one("Deployment", "cascade")
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
check(ports.get("http") == port_of(setting("server", "listen")),
      f"container port http {ports.get('http')} is not server.listen {setting('server', 'listen')}")
check(ports.get("admin") == port_of(setting("server", "admin_listen")),
      f"container port admin {ports.get('admin')} is not server.admin_listen {setting('server', 'admin_listen')}")
check(setting("server", "listen").startswith("0.0.0.0"), "server.listen must bind all interfaces in a pod")
for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")]:
    get = container.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"{probe} must GET {path}, not {get.get('path')}")
    check(get.get("port") in ("admin", ports.get("admin")), f"{probe} must use the admin port")
drain_ms = setting("server", "drain_delay_ms") + setting("server", "shutdown_grace_ms")
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace * 1000 >= drain_ms + 1000,
      f"terminationGracePeriodSeconds {grace} s does not cover drain_delay_ms + shutdown_grace_ms ({drain_ms} ms) with a second to spare")
pre_stop = container.get("lifecycle", {}).get("preStop")
check(pre_stop is None, "Cascade drains by itself on SIGTERM: a preStop hook only delays it")
read_every = container["readinessProbe"].get("periodSeconds", 10) * container["readinessProbe"].get("failureThreshold", 3)
check(read_every * 1000 <= setting("server", "drain_delay_ms"),
      f"readiness notices a drain after {read_every} s, longer than drain_delay_ms")
check(container["args"][-1] == "/etc/cascade/config.toml"
      and any(m["mountPath"] == "/etc/cascade" for m in container["volumeMounts"]),
      "the server must read the mounted ConfigMap")

# The admin token comes from the Secret.
secret = one("Secret", "cascade-admin")
refs = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if e["name"] == "CASCADE_SERVER__ADMIN_TOKEN"]
check(len(refs) == 1, "CASCADE_SERVER__ADMIN_TOKEN must come from a Secret")
for ref in refs:
    check(ref["name"] == "cascade-admin" and ref["key"] in secret.get("stringData", secret.get("data", {})),
          f"the admin token's secretKeyRef {ref} is not in secret.yaml")

# The Service, the PDB and the HPA point at the Deployment.
labels = deployment["spec"]["template"]["metadata"]["labels"]
service = one("Service", "cascade")
check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects no Cascade pod")
for p in service["spec"]["ports"]:
    check(p["targetPort"] in ports, f"Service port {p['name']} targets {p['targetPort']}, which the pod does not name")
pdb = one("PodDisruptionBudget", "cascade")
check(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), "the PDB selects no Cascade pod")
check(pdb["spec"].get("minAvailable", 0) < deployment["spec"]["replicas"], "the PDB would block every drain")
hpa = one("HorizontalPodAutoscaler", "cascade")
check(hpa["spec"]["scaleTargetRef"]["name"] == "cascade", "the HPA scales something else")
check(hpa["spec"]["minReplicas"] > pdb["spec"].get("minAvailable", 0), "the HPA's minimum leaves the PDB no room")
pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
adapter = one("ConfigMap", "cascade-prometheus-adapter")
rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
served_metrics = {r["name"]["as"] for r in rules}
for m in pod_metrics:
    check(m in served_metrics, f"the HPA reads {m}, which no Prometheus adapter rule serves")
    check(m in (ROOT / "src/telemetry/metrics.rs").read_text(), f"{m} is not a metric Cascade exports")

# The state store: the Redis the config names is the Service redis.yaml defines.
if setting("state", "backend") == "redis":
    url = served["state"]["redis_url"]
    host, port = re.match(r"redis://([^:/]+):(\d+)", url).groups()
    redis = one("Service", host)
    check(any(p["port"] == int(port) for p in redis.get("spec", {}).get("ports", [])),
          f"{url}: the Service {host} has no port {port}")

# The image: ports, user and the state folder the manifests assume.
dockerfile = (ROOT / "Dockerfile").read_text()
expose = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()}
check(expose == set(ports.values()), f"the Dockerfile exposes {sorted(expose)}, the pod {sorted(ports.values())}")
user = re.findall(r"^USER (\d+)", dockerfile, re.M)
check(user and int(user[-1]) == pod["securityContext"]["runAsUser"], "the image's USER is not the pod's runAsUser")
check("CASCADE_STATE__DIR=/var/lib/cascade/state" in dockerfile
      and any(m["mountPath"] == "/var/lib/cascade/state" for m in container["volumeMounts"]),
      "the state folder must be a volume in the pod")

for p in problems:
    print(p)
print(f"{len(docs)} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)

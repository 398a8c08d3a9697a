"""Reads deploy/kubernetes's manifests and prints, for each container of each DaemonSet and
Pod, what a kubelet would run, as bash arrays for scripts/test-containers:

  <key>_run      podman run options: privileged, user and groups, read-only root,
                 no-new-privileges, dropped capabilities, host PID, memory limit, env,
                 volumes (hostPath under NODE, mountPropagation as rshared/rslave)
  <key>_image    the image named in the manifest
  <key>_command  the container's command, if it sets one
  <key>_args     its args
  <key>_prestop, <key>_ready, <key>_live   exec commands of the hooks and probes
  <key>_grace    terminationGracePeriodSeconds
  <key>_hostpaths  host directories to create (type DirectoryOrCreate)

<key> is the object's name with '-' as '_'. Usage: kubelet.py NODE FILE..."""
import shlex
import sys

import yaml

PROPAGATION = {"Bidirectional": "rshared", "HostToContainer": "rslave", "None": "rprivate", None: "rprivate"}


def array(name, values):
    return f"{name}=({' '.join(shlex.quote(str(v)) for v in values)})"


def memory(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def containers(node, objects):
    for obj in objects:
        if not obj:
            continue
        kind = obj["kind"]
        if kind == "DaemonSet":
            spec = obj["spec"]["template"]["spec"]
        elif kind == "Pod":
            spec = obj["spec"]
        else:
            continue
        key = obj["metadata"]["name"].replace("-", "_")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        pod_security = spec.get("securityContext", {})
        for index, c in enumerate(spec["containers"]):
            name = key if index == 0 else f"{key}_{c['name'].replace('-', '_')}"
            run, hostpaths = [], []
            sc = c.get("securityContext", {})
            if sc.get("privileged"):
                run.append("--privileged")
            user = sc.get("runAsUser", pod_security.get("runAsUser"))
            group = sc.get("runAsGroup", pod_security.get("runAsGroup"))
            if user is not None:
                run += ["--user", f"{user}:{group if group is not None else user}"]
            for g in pod_security.get("supplementalGroups", []):
                run += ["--group-add", str(g)]
            if sc.get("readOnlyRootFilesystem"):
                run.append("--read-only")
            if sc.get("allowPrivilegeEscalation") is False:
                run += ["--security-opt", "no-new-privileges"]
            for cap in sc.get("capabilities", {}).get("drop", []):
                run += ["--cap-drop", cap.lower()]
            if spec.get("hostPID"):
                run += ["--pid", "host"]
            limit = c.get("resources", {}).get("limits", {}).get("memory")
            if limit:
                run += ["--memory", str(memory(limit)), "--memory-swap", str(memory(limit))]
            for e in c.get("env", []):
                run += ["--env", f"{e['name']}={e['value']}"]
            for m in c.get("volumeMounts", []):
                v = volumes[m["name"]]["hostPath"]
                if v.get("type") == "CharDevice":
                    run += ["--volume", f"{v['path']}:{m['mountPath']}"]
                    continue
                source = node + v["path"]
                if v.get("type") == "DirectoryOrCreate":
                    hostpaths.append(source)
                options = [PROPAGATION[m.get("mountPropagation")]]
                if m.get("readOnly"):
                    options.append("ro")
                run += ["--volume", f"{source}:{m['mountPath']}:{','.join(options)}"]
            print(array(f"{name}_run", run))
            print(f"{name}_image={shlex.quote(c['image'])}")
            print(array(f"{name}_command", c.get("command", [])))
            print(array(f"{name}_args", c.get("args", [])))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            print(array(f"{name}_prestop", pre))
            for probe, var in (("readinessProbe", "ready"), ("livenessProbe", "live")):
                print(array(f"{name}_{var}", c.get(probe, {}).get("exec", {}).get("command", [])))
            print(f"{name}_grace={spec.get('terminationGracePeriodSeconds', 30)}")
            print(array(f"{name}_hostpaths", hostpaths))


if __name__ == "__main__":
    node, files = sys.argv[1], sys.argv[2:]
    objects = []
    for f in files:
        with open(f) as handle:
            objects += list(yaml.safe_load_all(handle))
    containers(node, objects)

"""KubernetesBackend against the fake API server, whose kubelet runs real gateways on Docker."""

from __future__ import annotations

import re
import threading
import time

import pytest
from conftest import NAMESPACE

from enclave_tools import SandboxConfig, SandboxDied, SandboxStartFailed
from enclave_tools.backends.kubernetes import MANAGED_BY, POOL, SANDBOX, pod_manifest
from enclave_tools.backends.kubernetes.manifests import SAFE_TO_EVICT

pytestmark = pytest.mark.docker


def _pods(cluster, selector=""):
    return cluster.list("pods", selector)


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_pod_manifest_is_hardened():
    config = SandboxConfig(memory="512m", cpus=0.5, env={"A": "1"})
    pod = pod_manifest(
        config,
        name="enclave-x",
        image="img",
        secret="enclave-x",
        labels={"l": "v"},
        annotations={},
        max_lifetime=600,
        runtime_class="gvisor",
        overrides={"spec": {"nodeSelector": {"pool": "sandboxes"}}},
    )
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["activeDeadlineSeconds"] == 600 and spec["restartPolicy"] == "Never"
    assert spec["runtimeClassName"] == "gvisor" and spec["nodeSelector"] == {"pool": "sandboxes"}
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert "command" not in container and "args" not in container
    assert not any(
        "TOKEN" in e["name"] and "value" in e and e["name"] != "ENCLAVE_TOKEN_FILE" for e in container["env"]
    )
    assert {"name": "A", "value": "1"} in container["env"]
    from kubernetes import client

    assert client.V1Pod.from_dict(pod).spec.containers[0].security_context.capabilities.drop == ["ALL"]


def test_sandbox_in_a_pod_keeps_state(fake_cluster, make_pod_sandbox):
    sb = make_pod_sandbox()
    assert sb.run("x = 20").ok
    assert sb.run("x + 22").text == "42"
    assert sb.run("1/0").error.name == "ZeroDivisionError"
    pod = fake_cluster.get("pods", NAMESPACE, sb.container_id)
    labels = pod["metadata"]["labels"]
    assert labels[MANAGED_BY] == "enclave-tools" and labels[SANDBOX] == sb.id
    assert "io.enclave-tools/owner" in labels
    token = sb.handle.endpoint.token
    assert token not in str(pod["spec"])  # the token lives in the Secret only
    # ...and the gateway deleted its copy: code in the sandbox cannot read it.
    seen = sb.run("import os; os.listdir('/run/enclave'), os.path.exists('/run/enclave-secret')")
    assert seen.text == "([], False)"
    assert fake_cluster.get("secrets", NAMESPACE, sb.container_id) is not None
    sb.close()  # a graceful delete: the pod goes once its containers have stopped
    assert _wait_for(lambda: fake_cluster.get("pods", NAMESPACE, pod["metadata"]["name"]) is None)
    assert fake_cluster.get("secrets", NAMESPACE, pod["metadata"]["name"]) is None


def test_port_forward_mode(make_backend, make_pod_sandbox, fake_cluster):
    sb = make_pod_sandbox(make_backend(connect="port_forward"))
    assert sb.run("y = 5").ok
    assert sb.run("print(y * 2)").text == "10"
    assert any(path.endswith("/portforward?ports=8888") for _, path in fake_cluster.requests)
    assert sb.run("import time; time.sleep(3)", timeout=1).status == "timeout"
    assert sb.run("y").text == "5"


def test_url_template_mode(make_backend, make_pod_sandbox):
    sb = make_pod_sandbox(make_backend(connect="url", url_template="http://{pod_ip}:8888"))
    assert sb.run("'via url'").text == "'via url'"
    path = sb.write_file("data.txt", "hello")
    assert sb.read_file(path) == b"hello"


def test_kernel_death_and_restart(make_pod_sandbox):
    sb = make_pod_sandbox()
    sb.run("z = 1")
    died = sb.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert died.status == "kernel_died" and died.state_lost
    assert sb.run("'z' in dir()").text == "False"
    for _ in range(3):
        sb.run("w = 2")
        sb.restart()
        assert sb.run("'w' in dir()").text == "False"


def test_pod_deleted_behind_the_backends_back(fake_cluster, make_pod_sandbox):
    sb = make_pod_sandbox()
    sb.run("a = 1")
    first = sb.container_id
    fake_cluster.remove("pods", NAMESPACE, first)  # someone ran kubectl delete
    fake_cluster.kubelet.pod_deleted({"metadata": {"namespace": NAMESPACE, "name": first}})
    with pytest.raises(SandboxDied, match="pod was deleted"):
        sb.run("a")
    execution = sb.run("'a' in dir()")  # the next run starts a new pod and says state was lost
    assert execution.text.startswith("False") and execution.state_lost
    assert sb.container_id != first


def test_gateway_killed_in_the_pod(fake_cluster, make_pod_sandbox):
    sb = make_pod_sandbox()
    sb.run("b = 1")
    fake_cluster.kubelet.container_of(NAMESPACE, sb.container_id).kill()
    with pytest.raises(SandboxDied, match="exit code 137"):
        sb.run("b")


def test_deadline_stops_the_pod_and_the_reaper_removes_it(fake_cluster, make_backend, make_pod_sandbox):
    backend = make_backend(max_lifetime=20)
    sb = make_pod_sandbox(backend)
    sb.run("c = 1")
    name = sb.container_id
    assert _wait_for(lambda: fake_cluster.get("pods", NAMESPACE, name)["status"]["phase"] == "Failed", 60)
    assert fake_cluster.get("pods", NAMESPACE, name)["status"]["reason"] == "DeadlineExceeded"
    with pytest.raises(SandboxDied, match="time limit"):
        sb.run("c")
    assert backend.reap_orphans() == 0  # the Sandbox already removed it; nothing is left over
    assert _wait_for(lambda: fake_cluster.get("pods", NAMESPACE, name) is None)


def test_reaper_removes_pods_of_a_crashed_client(fake_cluster, make_backend, k8s_config):
    crashed = make_backend()
    name = crashed._create(k8s_config, "orphan1", idle=False)["metadata"]["name"]
    # As a crashed client leaves it: its owner pid is gone (the kubelet keeps the container).
    with fake_cluster._lock:
        fake_cluster.objects["pods"][(NAMESPACE, name)]["metadata"]["annotations"][
            "io.enclave-tools/owner-pid"
        ] = "999999999"
    assert make_backend().reap_orphans() == 1
    assert _wait_for(lambda: not _pods(fake_cluster, f"{SANDBOX}=orphan1"))


def test_image_that_cannot_be_pulled(make_pod_sandbox, fake_cluster):
    sb = make_pod_sandbox(image="registry.invalid/nothing:1")
    with pytest.raises(SandboxStartFailed, match="could not be pulled"):
        sb.start()
    assert _wait_for(lambda: not _pods(fake_cluster))  # the failed pod was deleted


def test_unschedulable_pod_is_waited_for_until_a_node_comes(make_pod_sandbox, fake_cluster):
    """Unschedulable is what makes a cluster autoscaler add a node: the start waits."""
    kubelet, roomy = fake_cluster.kubelet, fake_cluster.kubelet.node_memory
    kubelet.node_memory = 2**20  # the node is full
    sb = make_pod_sandbox()
    outcome = []
    starter = threading.Thread(target=lambda: outcome.append(_outcome(sb.start)), daemon=True)
    starter.start()

    def waiting_for_a_node():
        pods = _pods(fake_cluster)
        conditions = pods[0]["status"].get("conditions", []) if pods else []
        return any(c.get("reason") == "Unschedulable" for c in conditions)

    assert _wait_for(waiting_for_a_node)
    assert not outcome  # still waiting, not failed
    kubelet.node_memory = roomy  # the autoscaler added a node
    starter.join(60)
    assert outcome == [None]
    assert sb.run("'scheduled'").text == "'scheduled'"


def test_unschedulable_until_the_timeout_says_why(make_pod_sandbox, fake_cluster):
    sb = make_pod_sandbox(memory="100g", startup_timeout=3)
    with pytest.raises(SandboxStartFailed, match="could not be scheduled.*Insufficient memory.*autoscaler"):
        sb.start()
    assert _wait_for(lambda: not _pods(fake_cluster))


def _outcome(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return exc
    return None


def test_api_errors_500_and_410_are_survived(fake_cluster, make_pod_sandbox):
    fake_cluster.fail("POST", "/pods$", 500)
    fake_cluster.fail("GET", "/pods/enclave-[0-9a-f]+$", 503)
    fake_cluster.expire_watches(1)
    sb = make_pod_sandbox()
    assert sb.run("'up'").text == "'up'"
    assert any("watch=true" in path for _, path in fake_cluster.requests)


def test_api_conflict_on_create_fails_clearly(fake_cluster, make_pod_sandbox):
    fake_cluster.fail("POST", "/secrets$", 409)
    with pytest.raises(SandboxStartFailed, match="409"):
        make_pod_sandbox().start()


def test_pool_claim_race(fake_cluster, make_backend, k8s_config):
    """Two clients see the same idle pod; the resourceVersion precondition lets one win."""
    first, second = make_backend(pool_size=2), make_backend(pool_size=2)
    assert first.fill_pool(k8s_config) == 2
    assert second.fill_pool(k8s_config) == 0  # the pool is shared by config, not by client
    idle = _pods(fake_cluster, f"{POOL}=idle")
    assert len(idle) == 2
    stale = idle[0]
    assert first.try_claim(stale, "s1") is not None
    assert second.try_claim(stale, "s2") is None  # 409: the pod changed since it was listed
    # Many clients at once over the remaining idle pod: exactly one gets it.
    results, barrier = [], threading.Barrier(4)

    def claim(n):
        backend = make_backend(pool_size=2)
        barrier.wait()
        results.append(backend._claim(k8s_config, f"r{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0]["metadata"]["name"] == idle[1]["metadata"]["name"]


def test_a_pool_pod_whose_status_changed_since_it_was_listed_is_still_claimed(
    fake_cluster, make_backend, k8s_config
):
    """The kubelet writes an idle pod's status (a new resourceVersion) while a client holds
    the listing: that 409 is not another claim, so the pod is read again and claimed."""
    backend = make_backend(pool_size=1)
    backend.fill_pool(k8s_config)
    listed = _pods(fake_cluster, f"{POOL}=idle")[0]
    name = listed["metadata"]["name"]
    status = fake_cluster.get("pods", NAMESPACE, name)["status"]
    fake_cluster.set_status(NAMESPACE, name, {**status, "message": "kubelet was here"})
    assert (
        fake_cluster.get("pods", NAMESPACE, name)["metadata"]["resourceVersion"]
        != (listed["metadata"]["resourceVersion"])
    )
    claimed = backend.try_claim(listed, "s1")
    assert claimed is not None and claimed["metadata"]["labels"][POOL] == "claimed"


def test_warm_pool_start_claims_a_ready_pod(fake_cluster, make_backend, make_pod_sandbox, k8s_config):
    backend = make_backend(pool_size=1)
    backend.fill_pool(k8s_config)
    warm = _pods(fake_cluster, f"{POOL}=idle")[0]["metadata"]["name"]
    assert _wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in fake_cluster.get("pods", NAMESPACE, warm)["status"].get("conditions", [])
        )
    )
    sb = make_pod_sandbox(backend)
    assert sb.run("'warm'").text == "'warm'"
    assert sb.container_id == warm  # the warm pod, not a new one
    assert _pods(fake_cluster, f"{POOL}=idle")  # refilled
    backend.drain_pool()


def test_pool_pods_are_safe_to_evict_until_claimed(fake_cluster, make_backend, k8s_config):
    backend = make_backend(pool_size=1)
    backend.fill_pool(k8s_config)
    idle = _pods(fake_cluster, f"{POOL}=idle")[0]
    assert idle["metadata"]["annotations"][SAFE_TO_EVICT] == "true"
    claimed = backend.try_claim(idle, "s1")
    assert claimed["metadata"]["annotations"][SAFE_TO_EVICT] == "false"


def test_a_pool_pod_being_deleted_is_not_claimed(fake_cluster, make_backend, make_pod_sandbox, k8s_config):
    """A node drain leaves a pod Running and Ready with a deletionTimestamp: never claim it."""
    backend = make_backend(pool_size=1)
    backend.fill_pool(k8s_config)
    warm = _pods(fake_cluster, f"{POOL}=idle")[0]["metadata"]["name"]
    assert _wait_for(
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in fake_cluster.get("pods", NAMESPACE, warm)["status"].get("conditions", [])
        )
    )
    fake_cluster.mark_terminating(NAMESPACE, warm)
    assert backend._claim(k8s_config, "s1") is None
    sb = make_pod_sandbox(backend)
    assert sb.run("'cold'").text == "'cold'"
    assert sb.container_id != warm


def test_close_deletes_gracefully(fake_cluster, make_pod_sandbox, docker_engine):
    """When the pod object is gone, its containers are gone too (a forced delete, grace 0,
    removes the object first and leaves the containers running for a while)."""
    sb = make_pod_sandbox()
    sb.run("1")
    name = sb.container_id
    sb.close()
    assert any(
        m == "DELETE" and f"/pods/{name}?" in p and "gracePeriodSeconds=2" in p
        for m, p in fake_cluster.requests
    )
    assert _wait_for(lambda: fake_cluster.get("pods", NAMESPACE, name) is None, 30)
    running = docker_engine.containers.list(
        filters={"label": f"io.enclave-tools.fake-pod={NAMESPACE}/{name}"}
    )
    assert running == []


def test_create_whose_answer_was_lost_is_not_a_conflict(fake_cluster, make_pod_sandbox):
    """A 504 after the write: the retry gets 409 for the object it made itself."""
    fake_cluster.fail("POST", "/secrets$", 504, after_write=True)
    fake_cluster.fail("POST", "/pods$", 504, after_write=True)
    sb = make_pod_sandbox()
    assert sb.run("'once'").text == "'once'"
    assert len(_pods(fake_cluster)) == 1


def test_port_forwards_and_api_calls_at_once(fake_cluster, make_backend, make_pod_sandbox):
    """kubernetes.stream patches the client it is given: each forward needs its own."""
    backend = make_backend(connect="port_forward")
    sb = make_pod_sandbox(backend)
    sb.run("1")
    errors = []

    def forward():
        for _ in range(10):
            try:
                sb.handle.endpoint.connect(10).close()
            except Exception as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

    def poll():
        for _ in range(60):
            try:
                assert backend.state(sb.handle).running
                backend.api.list_namespaced_pod(NAMESPACE, _request_timeout=10)
            except Exception as exc:  # noqa: BLE001 - collected for the assert
                errors.append(exc)

    threads = [threading.Thread(target=forward) for _ in range(3)] + [threading.Thread(target=poll)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert errors == []
    assert "call_api" not in vars(backend.kube.client)  # the shared client was never patched
    assert sb.run("'still'").text == "'still'"


def test_full_workspace_is_enospc_as_on_docker(make_pod_sandbox):
    sb = make_pod_sandbox(workspace_size="16m")
    filled = sb.run("open('big', 'wb').write(b'x' * (40 * 2**20))")
    assert filled.status == "error" and filled.error.name == "OSError" and "No space left" in filled.text
    assert sb.run("import os; os.remove('big'); 'alive'").text == "'alive'"


def test_disk_emptydir_over_its_limit_evicts_the_pod(make_pod_sandbox, monkeypatch):
    """Why scratch volumes are memory-backed: a disk emptyDir over its sizeLimit evicts the pod."""
    from enclave_tools.backends.kubernetes import backend as module

    def with_disk_workspace(*args, **kwargs):
        pod = pod_manifest(*args, **kwargs)
        for volume in pod["spec"]["volumes"]:
            if volume["name"] == "workspace":
                volume["emptyDir"].pop("medium")
        return pod

    monkeypatch.setattr(module, "pod_manifest", with_disk_workspace)
    sb = make_pod_sandbox(workspace_size="8m")
    try:  # the kubelet may evict the pod while this run writes, or after it
        sb.run("open('big', 'wb').write(b'x' * (20 * 2**20))")
    except SandboxDied as exc:
        died = str(exc)
    else:
        sb._backend.wait_stopped(sb.handle, 30)
        with pytest.raises(SandboxDied) as info:
            sb.run("1")
        died = str(info.value)
    assert re.search("evicted.*workspace", died), died


def test_network_none_denies_egress(fake_cluster, make_pod_sandbox):
    """The default makes the deny-egress policy, and the fake kubelet enforces it: a
    network-less pod cannot reach another pod that listens (and the host can)."""
    import socket

    listening = make_pod_sandbox(network="bridge")
    listening.run("import socket; server = socket.create_server(('0.0.0.0', 7777))")
    target = fake_cluster.get("pods", NAMESPACE, listening.container_id)["status"]["podIP"]
    socket.create_connection((target, 7777), 5).close()  # the listener answers
    probe = (
        f"import socket\ntry:\n    socket.create_connection(({target!r}, 7777), 3).close(); print('open')\n"
        "except OSError:\n    print('denied')"
    )
    assert make_pod_sandbox().run(probe).text == "denied"


def test_egress_policy_that_cannot_be_made_refuses_to_start(fake_cluster, make_backend, make_pod_sandbox):
    fake_cluster.fail("POST", "/networkpolicies$", 403)
    with pytest.raises(
        SandboxStartFailed, match="network='none' cannot be enforced.*403.*networkpolicy.yaml"
    ):
        make_pod_sandbox(make_backend()).start()
    with pytest.raises(SandboxStartFailed, match="is missing"):
        make_pod_sandbox(make_backend(network_policy="require")).start()
    with pytest.warns(RuntimeWarning, match="NOT enforced"):
        make_pod_sandbox(make_backend(network_policy="off")).start()


def test_config_a_pod_cannot_honour_is_refused(fake_cluster, make_pod_sandbox):
    for overrides, why in [
        ({"network": "my-docker-net"}, "Docker network"),
        ({"runtime": "runsc"}, "runtime_class"),
        ({"pids_limit": 100}, "podPidsLimit"),
        ({"transport": "unix"}, "unix"),
    ]:
        with pytest.raises(SandboxStartFailed, match=why):
            make_pod_sandbox(**overrides).start()
    assert not _pods(fake_cluster)


def test_network_policy_is_created_once(fake_cluster, make_backend, make_pod_sandbox):
    backend = make_backend()  # the default: network="none" makes sure the policy exists
    make_pod_sandbox(backend).start()
    make_pod_sandbox(backend).start()
    policies = fake_cluster.list("networkpolicies")
    assert len(policies) == 1
    assert policies[0]["spec"]["policyTypes"] == ["Egress"] and policies[0]["spec"]["egress"] == []


def test_an_api_outage_is_not_a_dead_pod(fake_cluster, make_pod_sandbox):
    sb = make_pod_sandbox()
    sb.run("d = 4")
    fake_cluster.fail("GET", f"/pods/{sb.container_id}$", 500, times=10)
    state = sb._backend.state(sb.handle)
    assert state.running and "500" in state.error
    assert sb.run("d").text == "4"  # the kernel never depended on the API server

"""The pure parts of building the kernel image: recipe hash, mirrors, platform tags, wheels."""

from __future__ import annotations

import io
import pathlib
import re
import tarfile

import docker.errors
import pytest
import requests.exceptions

from enclave_tools import image
from enclave_tools.errors import ImageBuildFailed, ImageNotFound
from enclave_tools.image import _common, base, bootstrap, build, wheelhouse
from enclave_tools.image import recipe as recipe_module

# --- the recipe hash -------------------------------------------------------------------


@pytest.fixture
def recipe(tmp_path: pathlib.Path) -> pathlib.Path:
    """A small build context."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "app.py").write_text("print('hi')\n")
    return tmp_path


def test_hash_is_stable(recipe):
    assert image.recipe_hash(recipe) == image.recipe_hash(recipe)
    assert re.fullmatch(r"[0-9a-f]{64}", image.recipe_hash(recipe))


def test_hash_ignores_wheels_and_caches(recipe):
    before = image.recipe_hash(recipe)
    (recipe / "wheels").mkdir()
    (recipe / "wheels" / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"zip")
    (recipe / "gateway" / "__pycache__").mkdir()
    (recipe / "gateway" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (recipe / "gateway" / "stray.pyc").write_bytes(b"\0")
    assert image.recipe_hash(recipe) == before


def test_hash_follows_content_and_names(recipe):
    before = image.recipe_hash(recipe)
    (recipe / "gateway" / "app.py").write_text("print('bye')\n")
    changed = image.recipe_hash(recipe)
    assert changed != before
    (recipe / "gateway" / "app.py").rename(recipe / "gateway" / "main.py")
    assert image.recipe_hash(recipe) not in (before, changed)


def test_only_the_top_level_wheels_dir_is_skipped(recipe):
    before = image.recipe_hash(recipe)
    (recipe / "gateway" / "wheels").mkdir()
    (recipe / "gateway" / "wheels" / "data.txt").write_text("kept")
    assert image.recipe_hash(recipe) != before


def test_default_image_is_tagged_by_the_recipe(recipe, monkeypatch):
    monkeypatch.setattr(recipe_module, "context_dir", lambda: recipe)
    assert image.default_image() == f"enclave-tools/kernel:{image.recipe_hash(recipe)[:12]}"


def test_the_repo_recipe_exists():
    assert (image.context_dir() / "Dockerfile").is_file()
    assert re.fullmatch(r"enclave-tools/kernel:[0-9a-f]{12}", image.default_image())


def test_cache_dir_honours_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image.cache_dir() == tmp_path / "enclave-tools"


def test_context_tar_holds_the_recipe_and_the_wheelhouse(recipe, tmp_path_factory):
    (recipe / "wheels").mkdir()
    (recipe / "wheels" / "stale-1.0-py3-none-any.whl").write_bytes(b"old")
    house = tmp_path_factory.mktemp("house")
    wheel = house / "six-1.17.0-py2.py3-none-any.whl"
    wheel.write_bytes(b"zip")
    with recipe_module.context_tar(recipe, [wheel]) as handle:
        data = handle.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {
        "Dockerfile",
        "requirements.txt",
        "gateway/app.py",
        "wheels",
        "wheels/six-1.17.0-py2.py3-none-any.whl",
    }
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


# --- the Debian mirror -----------------------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def _apt(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "apt"


def test_mirror_from_deb822(tmp_path):
    apt = _apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert image.debian_mirror("bookworm", apt) == "http://mirror.example/debian"
    assert image.debian_mirror("bookworm-security", apt) == "http://security.example/debian-security"


def test_mirror_skips_disabled_stanzas_and_other_files(tmp_path):
    disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
    apt = _apt(
        tmp_path,
        {
            "sources.list.d/a.sources": disabled,
            "sources.list.d/b.list.disabled-by-farm": "deb http://nope.example/debian bookworm main\n",
            "sources.list.d/c.sources": DEB822,
        },
    )
    assert image.debian_mirror("bookworm", apt) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://one.example/debian/ bookworm main contrib\n"
    )
    apt = _apt(tmp_path, {"sources.list": text})
    assert image.debian_mirror("bookworm", apt) == "https://one.example/debian"


def test_mirror_falls_back_to_deb_debian_org(tmp_path):
    ubuntu = "deb http://archive.ubuntu.com/ubuntu jammy main\n"
    assert (
        image.debian_mirror("bookworm", _apt(tmp_path, {"sources.list": ubuntu})) == bootstrap.DEFAULT_MIRROR
    )
    assert image.debian_mirror("bookworm", tmp_path / "missing") == bootstrap.DEFAULT_MIRROR


# --- platform tags ---------------------------------------------------------------------


def test_x86_64_tags():
    tags = image.platform_tags("x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    for tag in (
        "manylinux_2_27_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux_2_5_x86_64",
        "manylinux1_x86_64",
    ):
        assert tag in tags
    assert tags[-2:] == ["linux_x86_64", "any"]
    assert (
        tags.index("manylinux_2_28_x86_64")
        < tags.index("manylinux2014_x86_64")
        < tags.index("manylinux1_x86_64")
    )


def test_aarch64_tags():
    tags = image.platform_tags("aarch64")
    assert tags[0] == "manylinux_2_28_aarch64"
    assert "manylinux2014_aarch64" in tags and "linux_aarch64" in tags
    assert not any("manylinux1" in tag or "x86_64" in tag for tag in tags)
    assert image.platform_tags("arm64") == tags


def test_tags_follow_the_base_glibc():
    assert image.platform_tags("x86_64", (2, 36))[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_34_x86_64" in image.platform_tags("x86_64", (2, 36))
    assert image.platform_tags("amd64", (2, 31)) == image.platform_tags("x86_64", (2, 31))
    assert image.platform_tags("x86_64", (2, 5))[0] == "manylinux_2_17_x86_64"


# --- choosing the wheels ---------------------------------------------------------------


def test_parse_pins():
    text = (
        "# comment\nSix==1.17.0\nJinja2 == 3.1.6  # note\nfoo>=1\n"
        "-r other.txt\nbar[x]==2; python_version>'3'\n"
    )
    assert wheelhouse.parse_pins(text) == {
        "six": "1.17.0",
        "jinja2": "3.1.6",
        "foo": None,
        "bar": "2",
    }


def test_select_wheels_drops_stale_versions_and_unresolved_names():
    names = [
        "six-1.16.0-py2.py3-none-any.whl",
        "six-1.17.0-py2.py3-none-any.whl",
        "foo-1.0-py3-none-any.whl",
        "foo-2.0-py3-none-any.whl",
        "jinja2-3.1.6-py3-none-any.whl",
        "unused-9.9-py3-none-any.whl",
    ]
    paths = [pathlib.Path("/w") / n for n in names]
    pins = {"six": "1.17.0", "foo": None, "jinja2": "3.1.6"}
    chosen = {p.name for p in wheelhouse.select_wheels(paths, pins, {"six", "foo", "jinja2"})}
    assert chosen == {
        "six-1.17.0-py2.py3-none-any.whl",
        "foo-1.0-py3-none-any.whl",
        "foo-2.0-py3-none-any.whl",
        "jinja2-3.1.6-py3-none-any.whl",
    }
    # Without pip's list of resolved names every name is kept.
    assert "unused-9.9-py3-none-any.whl" in {p.name for p in wheelhouse.select_wheels(paths, pins, None)}


# --- progress --------------------------------------------------------------------------


def test_debootstrap_output_is_condensed():
    lines: list[str] = []
    counter = bootstrap.PackageCounter("debootstrap", lines.append)
    counter.feed("I: Retrieving InRelease ")
    for n in range(60):
        counter.feed(f"I: Retrieving pkg{n} 1.0-{n}")
        counter.feed(f"I: Validating pkg{n} 1.0-{n}")
    counter.feed("I: Unpacking required packages...")
    for n in range(3):
        counter.feed(f"I: Unpacking pkg{n}...")
    counter.feed("I: Base system installed successfully.")
    assert lines == [
        "debootstrap: Retrieving InRelease",
        "debootstrap: retrieving packages… 25",
        "debootstrap: validating packages… 25",
        "debootstrap: retrieving packages… 50",
        "debootstrap: validating packages… 50",
        "debootstrap: retrieving packages… 60",
        "debootstrap: validating packages… 60",
        "debootstrap: Unpacking required packages...",
        "debootstrap: unpacking packages… 3",
        "debootstrap: Base system installed successfully.",
    ]


def test_default_progress_goes_to_stderr(capsys):
    _common.reporter(None)("hello")
    assert capsys.readouterr().err == "enclave-tools: hello\n"


# --- errors without Docker -------------------------------------------------------------


def test_bootstrap_without_tools_says_what_to_install(monkeypatch):
    monkeypatch.setattr(bootstrap.shutil, "which", lambda _name: None)
    with pytest.raises(ImageBuildFailed, match="mmdebstrap"):
        bootstrap.bootstrap_tool()


def test_debootstrap_needs_root(monkeypatch):
    monkeypatch.setattr(
        bootstrap.shutil,
        "which",
        lambda name: f"/usr/sbin/{name}" if name == "debootstrap" else None,
    )
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildFailed, match="root"):
        bootstrap.bootstrap_tool()
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0)
    assert bootstrap.bootstrap_tool() == "debootstrap"


def test_mmdebstrap_is_preferred(monkeypatch):
    monkeypatch.setattr(bootstrap.shutil, "which", lambda name: f"/usr/bin/{name}")
    for uid in (0, 1000):
        monkeypatch.setattr(bootstrap.os, "geteuid", lambda uid=uid: uid)
        assert bootstrap.bootstrap_tool() == "mmdebstrap"


class _Images:
    def __init__(self, present: dict[str, str]) -> None:
        self.present = present

    def get(self, name):
        import docker.errors

        if name not in self.present:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return type("Image", (), {"id": self.present[name]})()


class _Client:
    def __init__(self, present: dict[str, str]) -> None:
        self.images = _Images(present)


def test_ensure_image_returns_a_local_image_id():
    assert image.ensure_image(_Client({"mine:1": "sha256:abc"}), "mine:1") == "sha256:abc"


def test_ensure_image_never_builds_or_pulls_other_images():
    with pytest.raises(ImageNotFound, match="never pulls"):
        image.ensure_image(_Client({}), "someone/else:1")


def test_ensure_image_without_build_points_at_the_cli():
    with pytest.raises(ImageNotFound, match="enclave-tools image build"):
        image.ensure_image(_Client({}), None, build=False)


# --- choosing the base -----------------------------------------------------------------


class _Api:
    """The daemon's registry answer for the probe, and a record of pulls."""

    def __init__(self, registry: Exception | None) -> None:
        self.registry = registry
        self.pulled: list[str] = []

    def _url(self, path: str, *args: str) -> str:
        return path.format(*args)

    def _get(self, url: str, timeout: float):
        assert timeout <= base.REGISTRY_TIMEOUT
        if self.registry is not None:
            raise self.registry
        return object()

    def _raise_for_status(self, response) -> None:
        pass

    def pull(self, repository, tag, stream, decode):
        self.pulled.append(f"{repository}:{tag}")
        return iter([{"status": "Pull complete"}, {"status": "Status: Downloaded"}])


class _BaseClient(_Client):
    def __init__(self, present: dict[str, str], registry: Exception | None = None) -> None:
        super().__init__(present)
        self.api = _Api(registry)


def _choose(client, monkeypatch, bootstrap=False):
    made: list[str] = []
    monkeypatch.setattr(base, "bootstrap_base", lambda client, tag, progress: made.append(tag))
    lines: list[str] = []
    chosen = base.choose_base(client, None, bootstrap, lines.append)
    return chosen, made, lines


def test_a_local_slim_base_comes_first(monkeypatch):
    client = _BaseClient({base.SLIM_BASE: "sha256:1", image.BOOTSTRAP_BASE: "sha256:2"})
    chosen, made, lines = _choose(client, monkeypatch)
    assert (chosen, made, client.api.pulled) == (base.SLIM_BASE, [], [])
    assert lines == [f"base: {base.SLIM_BASE} (local)"]


def test_a_base_bootstrapped_earlier_is_reused_before_pulling(monkeypatch):
    client = _BaseClient({image.BOOTSTRAP_BASE: "sha256:2"})
    chosen, made, _ = _choose(client, monkeypatch)
    assert (chosen, made, client.api.pulled) == (image.BOOTSTRAP_BASE, [], [])


def test_the_slim_base_is_pulled_where_a_registry_answers(monkeypatch):
    client = _BaseClient({})
    chosen, made, lines = _choose(client, monkeypatch)
    assert (chosen, made, client.api.pulled) == (base.SLIM_BASE, [], ["python:3.12-slim"])
    assert any("pulled" in line for line in lines)


@pytest.mark.parametrize(
    "offline",
    [
        pytest.param(requests.exceptions.ReadTimeout("read timed out"), id="registry-hangs"),
        pytest.param(docker.errors.APIError("no such host"), id="no-dns"),
    ],
)
def test_without_a_registry_the_base_is_bootstrapped(monkeypatch, offline):
    client = _BaseClient({}, registry=offline)
    chosen, made, lines = _choose(client, monkeypatch)
    assert (chosen, made, client.api.pulled) == (image.BOOTSTRAP_BASE, [image.BOOTSTRAP_BASE], [])
    assert any(line.startswith(f"base: cannot pull {base.SLIM_BASE}") for line in lines)
    assert any("bootstrapping" in line for line in lines)


def test_bootstrap_asked_for_never_pulls(monkeypatch):
    client = _BaseClient({base.SLIM_BASE: "sha256:1"})
    chosen, made, _ = _choose(client, monkeypatch, bootstrap=True)
    assert (chosen, made, client.api.pulled) == (image.BOOTSTRAP_BASE, [image.BOOTSTRAP_BASE], [])


# --- no dangling images ----------------------------------------------------------------


def test_the_images_of_finished_stages_are_noted():
    timer = build._StepTimer(lambda _line: None)
    for line in [
        "Step 1/6 : ARG BASE_IMAGE=python:3.12-slim",
        "Step 2/6 : FROM ${BASE_IMAGE} AS packages",
        " ---> 30d28260ffd7",
        "Step 3/6 : RUN pip install",
        " ---> Running in 0123456789ab",
        "Removing intermediate container 0123456789ab",
        " ---> 8cafe48e48da",
        "Step 4/6 : FROM ${BASE_IMAGE}",
        " ---> 30d28260ffd7",
        "Step 5/6 : COPY --from=packages /opt/enclave/ /opt/enclave/",
        " ---> ce0d2345d490",
        "Successfully built ce0d2345d490",
    ]:
        timer.line(line)
    assert timer.stage_images == ["8cafe48e48da"]


def test_only_untagged_stage_images_are_removed():
    removed: list[str] = []

    class Image:
        def __init__(self, tags):
            self.tags = tags

    class Images:
        def get(self, name):
            return {"aaa": Image([]), "bbb": Image(["enclave-tools/base:bookworm"])}[name]

        def remove(self, name):
            removed.append(name)

    client = type("Client", (), {"images": Images()})()
    build._remove_stages(client, ["aaa", "bbb"], lambda _line: None)
    assert removed == ["aaa"]


# --- pruning images of older recipes ---------------------------------------------------


class _PruneImage:
    def __init__(self, image_id: str, tags: list[str], labels: dict[str, str] | None = None) -> None:
        self.id, self.tags, self.labels = image_id, tags, labels or {}


class _PruneImages:
    """docker-py's ImageCollection as prune uses it: list, and remove by tag (untag; 409 when
    a container uses the image, as the engine answers)."""

    def __init__(self, images: list[_PruneImage], in_use: set[str]) -> None:
        self.images, self.in_use, self.removed = images, in_use, []

    def list(self):
        return [i for i in self.images if i.tags]

    def remove(self, tag: str, noprune: bool = False) -> None:
        import docker.errors

        image = next(i for i in self.images if tag in i.tags)
        if image.id in self.in_use and len(image.tags) == 1:
            response = type("Response", (), {"status_code": 409, "reason": "Conflict", "url": ""})()
            raise docker.errors.APIError("conflict: unable to remove repository reference", response)
        image.tags.remove(tag)
        self.removed.append(tag)


def test_prune_removes_older_recipes_and_what_was_built_on_them(monkeypatch):
    from enclave_tools.image import prune

    monkeypatch.setattr(prune, "default_image", lambda: "enclave-tools/kernel:new")
    images = _PruneImages(
        [
            _PruneImage("sha256:new", ["enclave-tools/kernel:new"]),
            _PruneImage("sha256:old", ["enclave-tools/kernel:old"]),
            _PruneImage("sha256:used", ["enclave-tools/kernel:used"]),
            _PruneImage(
                "sha256:d-new", ["enclave-tools/kernel-derived:a"], {prune.LABEL_DERIVED_FROM: "sha256:new"}
            ),
            _PruneImage(
                "sha256:d-old", ["enclave-tools/kernel-derived:b"], {prune.LABEL_DERIVED_FROM: "sha256:old"}
            ),
            _PruneImage(
                "sha256:d-gone", ["enclave-tools/kernel-derived:c"], {prune.LABEL_DERIVED_FROM: "sha256:x"}
            ),
            _PruneImage(
                "sha256:mine", ["mine:1", "enclave-tools/kernel-derived:d"]
            ),  # --from mine, nothing added
            _PruneImage(
                "sha256:d-mine", ["enclave-tools/kernel-derived:e"], {prune.LABEL_DERIVED_FROM: "sha256:mine"}
            ),
            _PruneImage("sha256:base", ["enclave-tools/base:bookworm"]),
        ],
        in_use={"sha256:used"},
    )
    client = type("Client", (), {"images": images})()
    assert prune.stale_tags(client) == [
        "enclave-tools/kernel-derived:b",
        "enclave-tools/kernel-derived:c",
        "enclave-tools/kernel:old",
        "enclave-tools/kernel:used",
    ]
    assert prune.prune_images(client, dry_run=True).removed == prune.stale_tags(client)
    assert images.removed == []
    seen: list[str] = []
    pruned = prune.prune_images(client, on_removed=seen.append)
    assert pruned.in_use == ["enclave-tools/kernel:used"]
    assert (
        pruned.removed
        == seen
        == [
            "enclave-tools/kernel-derived:b",
            "enclave-tools/kernel-derived:c",
            "enclave-tools/kernel:old",
        ]
    )
    assert prune.stale_tags(client) == ["enclave-tools/kernel:used"]


def test_prune_follows_chains_and_keeps_what_a_users_tag_still_holds(monkeypatch):
    from enclave_tools.image import prune

    monkeypatch.setattr(prune, "default_image", lambda: "enclave-tools/kernel:new")
    derived_from = prune.LABEL_DERIVED_FROM
    images = _PruneImages(
        [
            _PruneImage("sha256:new", ["enclave-tools/kernel:new"]),
            _PruneImage("sha256:old", ["enclave-tools/kernel:old", "enclave-tools/kernel-derived:alias"]),
            _PruneImage("sha256:a", ["enclave-tools/kernel-derived:a"], {derived_from: "sha256:old"}),
            # --from kernel-derived:a --with more: its base goes in the same prune
            _PruneImage("sha256:b", ["enclave-tools/kernel-derived:b"], {derived_from: "sha256:a"}),
            # an old kernel the user tagged as their own: it stays, and so does what was built on it
            _PruneImage("sha256:kept", ["enclave-tools/kernel:older", "mine:1"]),
            _PruneImage("sha256:c", ["enclave-tools/kernel-derived:c"], {derived_from: "sha256:kept"}),
            # the user's image built on a derived one carries its label (labels are inherited)
            _PruneImage("sha256:user", ["mine:2"], {derived_from: "sha256:old"}),
        ],
        in_use=set(),
    )
    client = type("Client", (), {"images": images})()
    assert prune.stale_tags(client) == [
        "enclave-tools/kernel-derived:a",
        "enclave-tools/kernel-derived:alias",
        "enclave-tools/kernel-derived:b",
        "enclave-tools/kernel:old",
        "enclave-tools/kernel:older",
    ]
    prune.prune_images(client)
    assert prune.stale_tags(client) == []  # one prune is enough

"""API drift: the index, the static scan of a plugin, the drift checks and `drift` command.

The plugin-level tests read `tests/data/drift-index-fragment.json`, a slice of the shipped index
(releases 0.30.0-0.34.0, a handful of modules) cut with
`python -m conformance.drift.build_index --slice-of conformance/drift/data/index.json.gz
--releases 0.30.0,0.31.0,0.32.0,0.33.0,0.34.0 --keep ... --out tests/data/drift-index-fragment.json`
(the `--keep` list is `FRAGMENT_KEEP` below). Nothing here uses the network.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from conformance.drift import command
from conformance.drift.analysis import DriftReport, analyse, describe_releases
from conformance.drift.build_index import declared_extensions, lazy_exports, merge, slice_index
from conformance.drift.index import DEFAULT_INDEX, ApiIndex, IndexFileError
from conformance.drift.scan import scan_target
from conformance.drift.signatures import Signature, incompatibilities
from conformance.framework import load_catalog
from conformance.overlay import fixture_names
from conformance.target import resolve_target
from reference._version import CONTRACT_ENV
from tests.conftest import run_check_group

FRAGMENT = Path(__file__).parent / "data" / "drift-index-fragment.json"
FRAGMENT_KEEP = (
    "vllm,vllm.platforms,vllm.platforms.interface,vllm.v1.worker.worker_base,"
    "vllm.v1.sample.logits_processor,vllm.v1.sample.logits_processor.interface,"
    "vllm.entrypoints.common.cli_args,vllm.entrypoints.launchers.cli_args,"
    "vllm.model_executor.models.registry"
)
RELEASES = ["0.30.0", "0.31.0", "0.32.0", "0.33.0", "0.34.0"]
DRIFT_CHECKS = [
    "drift.declared-range",
    "drift.imports-exist",
    "drift.override-signatures",
    "drift.private-names",
]


@pytest.fixture(scope="module")
def index() -> ApiIndex:
    return ApiIndex.load(FRAGMENT)


def plugin(tmp_path: Path, source: str, requires: str = "vllm>=0.30") -> Path:
    """A one-module plugin project `drift-probe` whose package holds `source`."""
    project = tmp_path / "drift-probe"
    package = project / "drift_probe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source), encoding="utf-8")
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
            [project]
            name = "drift-probe"
            version = "0.1.0"
            dependencies = ["{requires}"]

            [project.entry-points."vllm.general_plugins"]
            probe = "drift_probe:register"
            """),
        encoding="utf-8",
    )
    return project


def drift(tmp_path: Path, index: ApiIndex, source: str) -> DriftReport:
    return analyse(scan_target(resolve_target(str(plugin(tmp_path, source)))), index)


def only_import(report: DriftReport) -> list[str]:
    assert len(report.imports) == 1, [f.label for f in report.imports]
    return report.imports[0].missing_in


# -- the index --------------------------------------------------------------------------------


def test_the_fragment_is_a_slice_of_the_shipped_index(index):
    shipped = ApiIndex.load()
    fragment = slice_index(shipped.data, RELEASES, FRAGMENT_KEEP.split(","))
    assert json.loads(FRAGMENT.read_text()) == json.loads(json.dumps(fragment)), (
        "tests/data/drift-index-fragment.json is stale: cut it again (see this module's doc)"
    )


def test_the_shipped_index_covers_every_minor_release_from_0_20_to_0_34():
    shipped = ApiIndex.load()
    minors = {tuple(r.split(".")[:2]) for r in [*shipped.releases, *shipped.identical]}
    assert {("0", str(m)) for m in range(20, 35)} <= minors
    assert DEFAULT_INDEX.stat().st_size < 5_000_000, "the index should stay a few MB at most"


def test_an_engine_version_maps_to_the_newest_indexed_release_at_or_below_it(index):
    assert index.release_for("0.32.0+cpu") == "0.32.0"
    assert index.release_for("0.32.1") == "0.32.0", "a patch release maps to its minor"
    assert index.release_for("0.40.0") == "0.34.0"
    assert index.release_for("0.29.9") is None, "older than the index: no release"


def test_lazy_exports_of_vllm_resolve_like_real_names(index):
    assert index.import_mask("vllm", "LLM") == index.all_mask, "vllm.LLM comes from MODULE_ATTRS"
    assert index.resolve_class("vllm.platforms.Platform", "0.32.0") == (
        "vllm.platforms.interface.Platform"
    ), "a re-export resolves to the class it stands for"


def test_a_reader_refuses_a_file_that_is_not_an_index(tmp_path):
    bogus = tmp_path / "index.json"
    bogus.write_text('{"kind": "something-else"}')
    with pytest.raises(IndexFileError, match="not a schema-1 vllm-api-index"):
        ApiIndex.load(bogus)


# -- imports ----------------------------------------------------------------------------------


def test_an_import_from_a_module_added_later_is_missing_before_it(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        def parser(p):
            from vllm.entrypoints.common.cli_args import make_arg_parser
            return make_arg_parser(p)
        """,
    )
    assert only_import(report) == ["0.30.0", "0.31.0", "0.32.0"], "the module moved in 0.33"


def test_a_name_that_never_existed_is_missing_in_every_release(tmp_path, index):
    report = drift(tmp_path, index, "from vllm.platforms import NoSuchPlatform\n")
    assert only_import(report) == RELEASES
    assert report.holds_on == []


def test_the_v1_logits_processor_import_breaks_on_0_34(tmp_path, index):
    report = drift(tmp_path, index, "from vllm.v1.sample.logits_processor import BatchUpdate\n")
    assert only_import(report) == ["0.34.0"], "0.34 deleted the V1 logits-processor package"
    assert report.holds_on == ["0.30.0", "0.31.0", "0.32.0", "0.33.0"]


def test_module_imports_and_aliases_are_found_wherever_they_are(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        import vllm.platforms.interface as itf

        def later():
            import vllm.v1.sample.logits_processor.interface
            from vllm import LLM as Engine
        """,
    )
    found = {(f.module, f.name): f.missing_in for f in report.imports}
    assert found == {
        ("vllm.platforms.interface", None): [],
        ("vllm.v1.sample.logits_processor.interface", None): ["0.34.0"],
        ("vllm", "LLM"): [],
    }


def test_typing_only_and_guarded_imports_break_no_release(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from vllm.v1.sample.logits_processor import BatchUpdate
        try:
            from vllm.v1.sample.logits_processor import LogitsProcessor
        except ImportError:
            LogitsProcessor = None
        """,
    )
    assert [f.missing_in for f in report.imports] == [["0.34.0"], ["0.34.0"]]
    assert report.holds_on == RELEASES, "neither import can raise when the plugin runs"
    shapes = [(i["typing_only"], i["guarded"]) for i in report.to_json()["imports"]]
    assert shapes == [(True, False), (False, True)]


# -- overrides --------------------------------------------------------------------------------


def test_an_override_lacking_a_parameter_added_later_breaks_from_that_release(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        from vllm.v1.worker.worker_base import WorkerBase

        class Worker(WorkerBase):
            def set_kv_cache_layout(self, kv_cache_layout):
                self.layout = kv_cache_layout
        """,
    )
    (override,) = report.overrides
    assert override.base == "vllm.v1.worker.worker_base.WorkerBase"
    assert override.incompatible_in == ["0.33.0", "0.34.0"], "0.33 added a second parameter"
    assert "lacks `cp_kv_cache_interleave_size`" in override.describe("0.33.0")


def test_a_kwargs_override_fits_every_release(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        from vllm.v1.worker import worker_base

        class Worker(worker_base.WorkerBase):
            def set_kv_cache_layout(self, *args, **kwargs):
                return super().set_kv_cache_layout(*args, **kwargs)

            def helper_of_its_own(self, x):
                return x
        """,
    )
    (override,) = report.overrides
    assert override.method.name == "set_kv_cache_layout", "new methods override nothing"
    assert override.overrides_in == RELEASES and override.incompatible_in == []


def test_an_override_reached_through_the_plugins_own_base_class_is_judged(tmp_path, index):
    report = drift(
        tmp_path,
        index,
        """
        from vllm.platforms import Platform

        class Base(Platform):
            pass

        class Mine(Base):
            @classmethod
            def get_device_name(cls):
                return "mine"
        """,
    )
    (override,) = report.overrides
    assert override.cls.qualname == "drift_probe.Mine"
    assert override.base == "vllm.platforms.interface.Platform"
    assert override.incompatible_in == RELEASES, "Platform.get_device_name takes device_id"


@pytest.mark.parametrize(
    ("base", "override", "problem"),
    [
        ("self,x", "self,x", None),
        ("self,x", "self,-x", "takes `x` as keyword-only"),
        ("self,-x=", "self", "lacks keyword `x`"),
        ("self,/x", "self,y", None),
        ("self,x", "self,x,y", "requires `y`"),
        ("self,x", "self,x,y=", None),
        ("@class,cls,x", "@class,cls,**kw", None),
        ("@static,x", "@static,*a", None),
    ],
)
def test_the_override_rule(base, override, problem):
    found = incompatibilities(Signature.decode(base), Signature.decode(override))
    if problem is None:
        assert found == [], f"{override} fits {base}"
    else:
        assert len(found) == 1 and problem in found[0], found


def test_a_signature_survives_its_encoding():
    text = "@class,cls,/a,b=,*args,-c,-d=,**kw"
    assert Signature.decode(text).encode() == text


# -- the checks -------------------------------------------------------------------------------


#: The drift mutants are written against what changed from 0.32 to 0.33/0.34, so they are
#: judged as on vLLM 0.32 (on 0.34, the reference's default, what they import exists).
MUTANTS_JUDGED_AS = "0.32.0"


@pytest.fixture
def judged_as_0_32(monkeypatch):
    monkeypatch.setenv(CONTRACT_ENV, MUTANTS_JUDGED_AS)


def run_drift_and_package(spec: str) -> dict:
    target = resolve_target(spec)
    return {**run_check_group(target, "drift"), **run_check_group(target, "package")}


def test_every_drift_check_has_a_mutant():
    ids = sorted(k for k, v in load_catalog().items() if v.group == "drift")
    assert ids == DRIFT_CHECKS


@pytest.mark.parametrize("check_id", DRIFT_CHECKS)
@pytest.mark.usefixtures("judged_as_0_32")
def test_the_mutant_fails_its_drift_check_and_no_other(check_id):
    results = run_drift_and_package(check_id)
    assert results[check_id].status == "failed", results[check_id].message
    assert f"\nFix: {load_catalog()[check_id].fix}" in results[check_id].message
    others = {k: r.status for k, r in results.items() if k != check_id and r.status != "passed"}
    assert others == {}, "a drift mutant trips exactly its own check among drift and package"


@pytest.mark.usefixtures("judged_as_0_32")
def test_failures_name_the_import_the_file_and_the_releases():
    messages = {c: run_drift_and_package(c)[c].message for c in DRIFT_CHECKS}
    assert "vllm.entrypoints.common.cli_args.make_arg_parser" in messages["drift.imports-exist"]
    assert "exists in 0.33.0-0.34.0" in messages["drift.imports-exist"]
    assert "first breaks in 0.34.0" in messages["drift.declared-range"]
    assert "mutant_drift_declared_range/__init__.py:" in messages["drift.declared-range"]
    assert "requires `cp_kv_cache_interleave_size`" in messages["drift.override-signatures"]
    assert "_LazyRegisteredModel" in messages["drift.private-names"]


@pytest.mark.usefixtures("judged_as_0_32")
def test_the_drift_checks_start_no_probe(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a drift check started a probe")

    monkeypatch.setattr("conformance.context.run_probe", refuse)
    results = run_check_group(resolve_target("drift.declared-range"), "drift")
    assert results["drift.declared-range"].status == "failed"
    assert all(r.status != "error" for r in results.values()), results


@pytest.mark.parametrize("fixture", fixture_names())
def test_good_fixtures_pass_the_drift_checks(fixture):
    results = run_check_group(resolve_target(fixture), "drift")
    bad = {k: r.message for k, r in results.items() if r.status not in ("passed", "skipped")}
    if fixture == "dummy_logits_processor" and "<0.34" not in str(resolve_target(fixture).requires):
        # Its V1 import (vllm.v1.sample.logits_processor) is gone in 0.34 while it declares
        # `vllm>=0.31`: a true finding until its requirement gains `<0.34`.
        assert set(bad) == {"drift.declared-range"}, bad
        assert "first breaks in 0.34.0" in bad["drift.declared-range"]
        return
    assert bad == {}, f"{fixture} should hold on every release it declares"


# -- the command ------------------------------------------------------------------------------


def run_command(capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["drift", *argv])
    code = command.run(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_json_output_has_the_documented_shape(tmp_path, capsys):
    project = plugin(
        tmp_path,
        """
        from vllm.v1.sample.logits_processor import BatchUpdate
        from vllm.v1.worker.worker_base import WorkerBase

        class Worker(WorkerBase):
            def set_kv_cache_layout(self, kv_cache_layout):
                pass
        """,
    )
    code, out, _ = run_command(capsys, str(project), "--json", "--index", str(FRAGMENT))
    data = json.loads(out)
    assert code == 1, "some release breaks the plugin"
    assert data["releases"] == RELEASES
    assert data["imports"][0] | {} == data["imports"][0]
    assert [(i["module"], i["name"], i["missing_in"]) for i in data["imports"]] == [
        ("vllm.v1.sample.logits_processor", "BatchUpdate", ["0.34.0"]),
        ("vllm.v1.worker.worker_base", "WorkerBase", []),
    ]
    assert [
        (o["class"], o["method"], o["base"], o["incompatible_in"]) for o in data["overrides"]
    ] == [
        (
            "drift_probe.Worker",
            "set_kv_cache_layout",
            "vllm.v1.worker.worker_base.WorkerBase",
            ["0.33.0", "0.34.0"],
        )
    ]
    assert data["holds_on"] == ["0.30.0", "0.31.0", "0.32.0"]


def test_the_table_names_each_import_and_the_releases_it_holds_on(tmp_path, capsys):
    project = plugin(tmp_path, "from vllm.v1.sample.logits_processor import BatchUpdate\n")
    code, out, _ = run_command(
        capsys, str(project), "--index", str(FRAGMENT), "--releases", "0.32.0:0.33.0"
    )
    assert code == 0
    assert "vllm.v1.sample.logits_processor.BatchUpdate" in out
    assert out.rstrip().endswith("hold on releases 0.32.0-0.33.0.")


@pytest.mark.parametrize(
    ("releases", "said"),
    [("0.3x:abc", "is not A:B"), ("0.10.0:0.34.0", "outside the index"), ("0.34:0.30", "outside")],
)
def test_bad_releases_exit_2_with_a_message(tmp_path, capsys, releases, said):
    project = plugin(tmp_path, "import vllm\n")
    code, out, err = run_command(
        capsys, str(project), "--index", str(FRAGMENT), "--releases", releases
    )
    assert code == 2 and said in err and out == ""


def test_one_release_is_judged_as_the_newest_indexed_one_at_or_below_it(tmp_path, capsys):
    project = plugin(tmp_path, "import vllm\n")
    code, out, _ = run_command(
        capsys, str(project), "--json", "--index", str(FRAGMENT), "--releases", "0.32.1"
    )
    assert code == 0 and json.loads(out)["releases"] == ["0.32.0"]


def test_an_unknown_distribution_exits_2(capsys):
    code, _, err = run_command(capsys, "no-such-plugin-anywhere", "--index", str(FRAGMENT))
    assert code == 2 and "no-such-plugin-anywhere" in err


def test_an_installed_distribution_is_read_from_its_files(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "installed_probe").mkdir(parents=True)
    (site / "installed_probe" / "__init__.py").write_text("from vllm.platforms import Gone\n")
    info = site / "installed_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: installed-probe\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "installed_probe/__init__.py,,\ninstalled_probe-1.0.dist-info/METADATA,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    code, out, _ = run_command(capsys, "installed-probe", "--json", "--index", str(FRAGMENT))
    assert code == 1
    assert json.loads(out)["imports"][0]["where"] == ["installed_probe/__init__.py:1"]


# -- the builder ------------------------------------------------------------------------------


def test_lazy_export_tables_are_read_from_getattr():
    source = """
    import typing
    MODULE_ATTRS = {"LLM": ".entrypoints.llm:LLM", "ModelRegistry": ".models:ModelRegistry"}
    __all__ = ["A"]
    if typing.TYPE_CHECKING:
        from .llm import LLM
    else:
        def __getattr__(name):
            if name in MODULE_ATTRS:
                return 1
            if name == "current_platform" or name in ("x", "y") or name in __all__:
                return 2
            raise AttributeError(name)
    """
    found = lazy_exports(ast.parse(textwrap.dedent(source)))
    assert found == {"LLM", "ModelRegistry", "current_platform", "x", "y", "A"}


def test_compiled_extensions_are_read_from_setup_py(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text(
        'ext_modules.append(CMakeExtension(name="vllm._C"))\n'
        'ext_modules.append(CMakeExtension("vllm._moe_C", optional=True))\n'
        'other(name="vllm.not_an_extension")\n'
    )
    assert declared_extensions(setup) == {"vllm._C", "vllm._moe_C"}


def test_merging_releases_stores_each_name_once_with_a_bitset():
    from conformance.drift.build_index import ReleaseApi

    old = ReleaseApi("1.0.0", {"vllm", "vllm.a"}, names={"vllm.a": {"X", "Y"}})
    new = ReleaseApi("1.1.0", {"vllm", "vllm.a"}, names={"vllm.a": {"X"}})
    document = merge([old, new])
    assert document["names"]["vllm.a"] == {"X": 0b11, "Y": 0b01}
    assert describe_releases(["1.0.0"], document["releases"]) == "1.0.0"


def fake_sdist(tmp_path: Path) -> Path:
    files = {
        "setup.py": 'CMakeExtension(name="vllm._C")\n',
        "vllm/__init__.py": """
            import typing
            MODULE_ATTRS = {"LLM": ".llm:LLM"}
            if typing.TYPE_CHECKING:
                from vllm.llm import LLM
            else:
                def __getattr__(name):
                    if name in MODULE_ATTRS:
                        ...
            """,
        "vllm/llm.py": "class LLM:\n    def generate(self, prompts, /, *, n=1, **kw): ...\n",
        "vllm/platforms/__init__.py": "from .interface import Platform\n",
        "vllm/platforms/interface.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from vllm.llm import LLM

            class Platform:
                @classmethod
                def get_device_name(cls, device_id: int = 0) -> str: ...

                @property
                def label(self): ...
            """,
        "vllm/platforms/cpu.py": """
            from vllm.platforms import Platform

            class CpuPlatform(Platform):
                def warm_up(self, *args, steps): ...
            """,
    }
    path = tmp_path / "vllm-9.9.9.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(f"vllm-9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_builder_reads_a_source_distribution_statically(tmp_path):
    pytest.importorskip("griffe", reason="the index builder needs griffe (the test extra)")
    from conformance.drift.build_index import extract_release

    api = extract_release(fake_sdist(tmp_path))
    assert api.version == "9.9.9"
    assert api.modules == {"vllm", "vllm.llm", "vllm.platforms", "vllm.platforms.interface",
                           "vllm.platforms.cpu"}  # fmt: skip
    assert api.extensions == {"vllm._C"}
    assert {"LLM", "MODULE_ATTRS"} <= api.names["vllm"], "lazy exports count as names"
    assert "LLM" not in api.names["vllm.platforms.interface"], "typing-only imports do not"
    assert api.aliases["vllm.platforms"] == {"Platform": "vllm.platforms.interface.Platform"}
    bases, methods = api.classes["vllm.platforms.cpu.CpuPlatform"]
    assert bases == ["vllm.platforms.interface.Platform"], "bases resolve through re-exports"
    assert methods == {"warm_up": "self,*args,-steps"}
    assert api.classes["vllm.platforms.interface.Platform"][1] == {
        "get_device_name": "@class,cls,device_id="
    }, "properties are not methods"
    assert api.classes["vllm.llm.LLM"][1] == {"generate": "/self,/prompts,-n=,**kw"}


def test_a_base_taking_args_and_kwargs_lets_the_override_name_what_it_needs():
    # vLLM's QuantizeMethodBase.embedding(self, layer, *args, **kwargs), overridden by a real
    # plugin (vllm-gguf-plugin) as embedding(self, layer, x): no call vLLM makes breaks it.
    from conformance.drift.signatures import (
        POSITIONAL_OR_KEYWORD,
        VAR_KEYWORD,
        VAR_POSITIONAL,
        Param,
        Signature,
        incompatibilities,
    )

    def sig(*params):
        return Signature(tuple(params))

    base = sig(
        Param("self", POSITIONAL_OR_KEYWORD),
        Param("layer", POSITIONAL_OR_KEYWORD),
        Param("args", VAR_POSITIONAL),
        Param("kwargs", VAR_KEYWORD),
    )
    override = sig(
        Param("self", POSITIONAL_OR_KEYWORD),
        Param("layer", POSITIONAL_OR_KEYWORD),
        Param("x", POSITIONAL_OR_KEYWORD),
    )
    assert incompatibilities(base, override) == []
    dropped = sig(Param("self", POSITIONAL_OR_KEYWORD))
    assert incompatibilities(base, dropped) == ["lacks `layer`"], "named ones are still required"

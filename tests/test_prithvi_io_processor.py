"""The Prithvi-like IO processor fixture: requests and the path policy, image checks, and round
trips through the processor on the mounted reference engine (with fake model outputs)."""

from __future__ import annotations

import base64
import importlib
import io
import socket
import sys
import warnings

import pytest

from conformance.overlay import Overlay, fixtures_root
from conformance.probe import run_probe
from tests.conftest import code

FIXTURE_DIR = fixtures_root() / "prithvi_io_processor"
ROOT_ENV = "PRITHVI_ALLOWED_ROOT"


@pytest.fixture(scope="module")
def fixture_package():
    """Import the fixture's vLLM-free modules in this process (its processor needs a probe)."""
    sys.path.insert(0, str(FIXTURE_DIR))
    try:
        yield lambda name: importlib.import_module(f"prithvi_io_processor.{name}")
    finally:
        sys.path.remove(str(FIXTURE_DIR))
        for name in [m for m in sys.modules if m.split(".")[0] == "prithvi_io_processor"]:
            del sys.modules[name]


@pytest.fixture
def request_module(fixture_package):
    return fixture_package("request")


@pytest.fixture
def imaging(fixture_package):
    pytest.importorskip("numpy")
    pytest.importorskip("tifffile")
    return fixture_package("imaging")


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


@pytest.fixture
def tifffile():
    return pytest.importorskip("tifffile")


@pytest.fixture
def allowed_root(tmp_path, monkeypatch):
    """An allowed root holding `scene.tif`, and `secret.tif` beside (outside) it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "scene.tif").write_bytes(b"inside")
    (tmp_path / "secret.tif").write_bytes(b"secret")
    monkeypatch.setenv(ROOT_ENV, str(root))
    return root


def path_request(data: object) -> dict:
    return {"data": data, "data_format": "path", "out_data_format": "b64_json"}


def b64_request(data: object) -> dict:
    return {"data": data, "data_format": "b64_json", "out_data_format": "b64_json"}


# --------------------------------------------------------------------------------------------
# Requests and the path policy


def test_a_path_under_the_allowed_root_is_read(request_module, allowed_root):
    parsed = request_module.parse_request(path_request(str(allowed_root / "scene.tif")))
    assert parsed.image_bytes == b"inside"
    assert parsed.source == str((allowed_root / "scene.tif").resolve())


def test_a_relative_path_is_taken_relative_to_the_allowed_root(request_module, allowed_root):
    assert request_module.parse_request(path_request("scene.tif")).image_bytes == b"inside"


def test_a_path_outside_the_allowed_root_is_refused(request_module, allowed_root):
    with pytest.raises(ValueError, match="outside the allowed root"):
        request_module.parse_request(path_request(str(allowed_root.parent / "secret.tif")))


@pytest.mark.parametrize("escape", ["../secret.tif", "sub/../../secret.tif"])
def test_dot_dot_cannot_leave_the_allowed_root(request_module, allowed_root, escape):
    with pytest.raises(ValueError, match="outside the allowed root"):
        request_module.parse_request(path_request(escape))


def test_a_symlink_out_of_the_allowed_root_is_refused(request_module, allowed_root):
    link = allowed_root / "innocent.tif"
    try:
        link.symlink_to(allowed_root.parent / "secret.tif")
    except OSError:
        pytest.skip("this file system does not allow symbolic links")
    with pytest.raises(ValueError, match="outside the allowed root"):
        request_module.parse_request(path_request("innocent.tif"))


def test_a_symlinked_directory_out_of_the_allowed_root_is_refused(request_module, allowed_root):
    try:
        (allowed_root / "escape").symlink_to(allowed_root.parent, target_is_directory=True)
    except OSError:
        pytest.skip("this file system does not allow symbolic links")
    with pytest.raises(ValueError, match="outside the allowed root"):
        request_module.parse_request(path_request("escape/secret.tif"))


def test_a_symlink_that_stays_under_the_root_is_followed(request_module, allowed_root):
    try:
        (allowed_root / "sub" / "alias.tif").symlink_to(allowed_root / "scene.tif")
    except OSError:
        pytest.skip("this file system does not allow symbolic links")
    assert request_module.parse_request(path_request("sub/alias.tif")).image_bytes == b"inside"


def test_paths_are_refused_when_no_root_is_configured(request_module, allowed_root, monkeypatch):
    monkeypatch.delenv(ROOT_ENV)
    with pytest.raises(ValueError, match=f"'path' is disabled: set {ROOT_ENV}"):
        request_module.parse_request(path_request(str(allowed_root / "scene.tif")))


def test_a_root_that_is_not_a_directory_is_refused(request_module, allowed_root, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(allowed_root / "scene.tif"))
    with pytest.raises(ValueError, match="is not a directory"):
        request_module.parse_request(path_request("scene.tif"))


def test_a_missing_file_under_the_root_is_a_value_error(request_module, allowed_root):
    with pytest.raises(ValueError, match="No image file at 'absent.tif'"):
        request_module.parse_request(path_request("absent.tif"))


def test_a_url_is_refused_without_touching_the_network(request_module, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the processor must never open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    request = {
        "data": "https://example.com/a.tif",
        "data_format": "url",
        "out_data_format": "b64_json",
    }
    with pytest.raises(ValueError, match="'url' is not supported: this processor never opens"):
        request_module.parse_request(request)


@pytest.mark.parametrize(
    ("request_data", "problem"),
    [
        (["not", "a", "dict"], "must be a dict"),
        ({"data": "AAAA"}, "missing ['data_format', 'out_data_format']"),
        ({**b64_request("AAAA"), "colour": "red"}, "unknown keys ['colour']"),
        ({**b64_request("AAAA"), "data_format": "bytes"}, "Unknown data_format 'bytes'"),
        ({**b64_request("AAAA"), "out_data_format": "url"}, "out_data_format 'url' is not"),
        ({**b64_request("AAAA"), "image_format": "png"}, "image_format 'png' is not supported"),
        (b64_request(5), "'data' must be a non-empty string"),
        (b64_request(""), "'data' must be a non-empty string"),
        (b64_request("not base64!"), "not valid base64"),
        (b64_request(" \n "), "decodes to no bytes"),
    ],
    ids=[
        "not-a-dict",
        "missing-keys",
        "unknown-key",
        "unknown-data-format",
        "unsupported-out-format",
        "not-a-tiff-format",
        "data-not-a-string",
        "empty-data",
        "bad-base64",
        "empty-base64",
    ],
)
def test_a_malformed_request_is_a_value_error_naming_the_problem(
    request_module, request_data, problem
):
    with pytest.raises(ValueError) as info:
        request_module.parse_request(request_data)
    assert problem in str(info.value), f"expected {problem!r} in: {info.value}"


def test_line_breaks_in_base64_are_ignored(request_module):
    encoded = base64.encodebytes(b"a TIFF file" * 20).decode()
    assert "\n" in encoded
    assert request_module.parse_request(b64_request(encoded)).image_bytes == b"a TIFF file" * 20


# --------------------------------------------------------------------------------------------
# Images


def encode(tifffile, array, **kwargs) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # tifffile warns that a zero-size image makes a nonconformant TIFF: that is the point.
        warnings.simplefilter("ignore", UserWarning)
        tifffile.imwrite(buffer, array, metadata=None, **kwargs)
    return buffer.getvalue()


def test_a_planar_geotiff_decodes_band_first_with_its_geo_tags(imaging, np, tmp_path):
    from fixtures.generators.geotiff import geotiff_pixels, make_geotiff

    image = imaging.decode_geotiff(make_geotiff(tmp_path / "a.tif").read_bytes())
    assert image.pixels.shape == (6, 50, 70)
    assert np.array_equal(image.pixels, geotiff_pixels())
    assert [tag[0] for tag in image.geo_tags] == [33550, 33922, 34735]


def test_the_geotiff_generator_is_deterministic_per_seed(tifffile, tmp_path):
    from fixtures.generators.geotiff import make_geotiff

    first = make_geotiff(tmp_path / "a.tif", seed=1).read_bytes()
    again = make_geotiff(tmp_path / "b.tif", seed=1).read_bytes()
    other = make_geotiff(tmp_path / "c.tif", seed=2).read_bytes()
    assert first == again, "the same arguments must give the same file"
    assert first != other, "another seed must give another image"


def test_cached_geotiffs_are_written_once(tifffile, tmp_path, monkeypatch):
    from fixtures.generators.geotiff import cached_geotiff

    monkeypatch.setenv("VLLM_CONFORMANCE_CACHE", str(tmp_path))
    path = cached_geotiff(height=9, width=11)
    written = path.stat().st_mtime_ns
    assert cached_geotiff(height=9, width=11) == path
    assert path.stat().st_mtime_ns == written, "a cached image must be reused, not rewritten"


def test_an_interleaved_tiff_is_turned_band_first(imaging, np, tifffile):
    pixels = np.arange(6 * 4 * 5, dtype=np.uint16).reshape(6, 4, 5)
    interleaved = encode(
        tifffile, np.moveaxis(pixels, 0, -1), photometric="minisblack", planarconfig="contig"
    )
    assert np.array_equal(imaging.decode_geotiff(interleaved).pixels, pixels)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda np, tf: b"II*\x00 not really a TIFF", "not a readable TIFF"),
        (lambda np, tf: encode(tf, np.zeros((4, 5), np.uint16)), "single band; expected 6"),
        (
            lambda np, tf: encode(tf, np.zeros((3, 4, 5), np.uint16), photometric="minisblack"),
            "3 bands; expected 6",
        ),
        (
            lambda np, tf: encode(
                tf,
                np.zeros((2, 6, 4, 5), np.uint16),
                photometric="minisblack",
                planarconfig="separate",
            ),
            "4 dimensions",
        ),
        (lambda np, tf: encode(tf, np.zeros((6, 0, 5), np.uint16)), "The image is empty"),
        (lambda np, tf: encode(tf, np.zeros((6, 4, 5), bool)), "pixels are bool"),
    ],
    ids=["not-a-tiff", "one-band", "three-bands", "four-dims", "empty", "bool-pixels"],
)
def test_an_unusable_image_is_a_value_error_naming_the_problem(
    imaging, np, tifffile, make, problem
):
    with pytest.raises(ValueError) as info:
        imaging.decode_geotiff(make(np, tifffile))
    assert problem in str(info.value), f"expected {problem!r} in: {info.value}"


def test_normalise_gives_each_band_zero_mean_and_unit_variance(imaging, np):
    from fixtures.generators.geotiff import geotiff_pixels

    normalised = imaging.normalise(geotiff_pixels())
    assert normalised.dtype == np.float32
    assert np.allclose(normalised.mean(axis=(1, 2)), 0, atol=1e-5)
    assert np.allclose(normalised.std(axis=(1, 2)), 1, atol=1e-4)


def test_a_constant_band_normalises_to_zeros(imaging, np):
    pixels = np.full((6, 3, 3), 1234, dtype=np.uint16)
    assert not imaging.normalise(pixels).any()


def test_non_finite_pixels_are_refused(imaging, np):
    pixels = np.ones((6, 3, 3), dtype=np.float32)
    pixels[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        imaging.normalise(pixels)


def test_tiling_pads_by_reflection_into_row_major_windows(imaging, np):
    pixels = np.arange(50 * 70, dtype=np.float32).reshape(1, 50, 70)
    windows, grid = imaging.tile(pixels, 32)
    assert grid == (2, 3) and windows.shape == (6, 1, 32, 32)
    assert np.array_equal(windows[1, 0, :, :], pixels[0, :32, 32:64]), "window 1 is row 0, col 1"
    assert np.array_equal(windows[3, 0, 18, :], pixels[0, 48, :32]), "row 50 mirrors row 48"


def test_stitching_undoes_tiling_and_crops_the_padding(imaging, np):
    pixels = np.arange(50 * 70, dtype=np.float32).reshape(1, 50, 70)
    windows, grid = imaging.tile(pixels, 32)
    assert np.array_equal(imaging.stitch(list(windows[:, 0]), grid, 50, 70), pixels[0])


def test_class_map_takes_the_best_class_per_pixel(imaging, np):
    scores = np.zeros((3, 32, 32), np.float32)
    scores[2, :5] = 1.0
    scores[1, 5:] = 1.0
    expected = np.where(np.arange(32)[:, None] < 5, 2, 1) * np.ones((1, 32), int)
    result = imaging.class_map(scores)
    assert result.dtype == np.uint8 and np.array_equal(result, expected)


@pytest.mark.parametrize("shape", [(32, 32), (2, 16, 16), (0, 32, 32), (300, 32, 32)])
def test_class_map_refuses_scores_of_the_wrong_shape(imaging, np, shape):
    with pytest.raises(ValueError, match="Model output 4 has"):
        imaging.class_map(np.zeros(shape, np.float32), 32, index=4)


def test_class_map_accepts_torch_tensors(imaging, np):
    torch = pytest.importorskip("torch")
    scores = torch.zeros((2, 32, 32), dtype=torch.bfloat16)
    scores[1, :, :10] = 1.0
    assert int(imaging.class_map(scores).sum()) == 32 * 10


def test_the_encoded_result_is_a_uint8_geotiff(imaging, np, tifffile):
    tags = ((33550, 12, 3, (30.0, 30.0, 0.0)),)
    mask = np.eye(5, 7, dtype=np.uint8)
    with tifffile.TiffFile(io.BytesIO(imaging.encode_geotiff(mask, tags))) as tif:
        assert np.array_equal(tif.asarray(), mask)
        assert tif.pages[0].tags.get(33550).value == (30.0, 30.0, 0.0)


# --------------------------------------------------------------------------------------------
# The processor on the mounted reference engine (probes)

PROCESSOR = code(
    """
    import base64, io
    import numpy as np, tifffile
    from conformance.probes.io_processor import served_config
    from vllm.plugins.io_processors import get_io_processor
    from vllm.plugins.io_processors.interface import BaseRenderer

    # Built as a server builds it: with the full config of the pooling model it serves.
    config, _ = served_config("prithvi_to_tiff")
    processor = get_io_processor(config, BaseRenderer(), "prithvi_to_tiff")
    cls = type(processor)

    def decode(response):
        with tifffile.TiffFile(io.BytesIO(base64.b64decode(response["data"]))) as tif:
            geo = [c for c in (33550, 33922, 34735) if tif.pages[0].tags.get(c) is not None]
            return tif.asarray(), geo

    def expected(request):
        pixels = tifffile.imread(io.BytesIO(base64.b64decode(request["data"])))
        band0 = pixels[0].astype(np.float64)
        return band0 > band0.mean()

    def round_trip(request, request_id):
        prompts = processor.pre_process(processor.parse_data(request), request_id=request_id)
        return prompts, processor.post_process(cls.conformance_fake_outputs(prompts), request_id)

    def error(call):
        try:
            call()
        except ValueError as exc:
            return str(exc)
        return None
    """
)


@pytest.fixture(scope="module")
def prithvi_overlay(tmp_path_factory):
    pytest.importorskip("numpy")
    pytest.importorskip("tifffile")
    return Overlay(tmp_path_factory.mktemp("prithvi") / "overlay").add_fixture(
        "prithvi_io_processor"
    )


def run_processor(overlay: Overlay, body: str, **kwargs):
    result = run_probe(PROCESSOR + code(body), overlay=overlay, **kwargs)
    assert result.ok, result.describe()
    return result.values


def test_a_round_trip_restores_the_input_size_and_segments_band_0(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        sample = cls.conformance_sample_request()
        prompts, response = round_trip(sample, "r1")
        mask, _ = decode(response)
        probe.result["response"] = [response["type"], response["format"]]
        probe.result["mask"] = [mask.dtype.name, list(mask.shape)]
        probe.result["matches"] = bool(np.array_equal(mask, expected(sample)))
        """,
    )
    assert values["response"] == ["b64_json", "tiff"]
    assert values["mask"] == ["uint8", [50, 70]], "a uint8 class map of the input's H x W"
    assert values["matches"], "class 1 exactly where band 0 is above its mean"


def test_pre_process_gives_one_float32_prompt_per_window(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        prompts = processor.pre_process(processor.parse_data(cls.conformance_sample_request()))
        probe.result["count"] = len(prompts)
        probe.result["first"] = {
            "prompt_token_ids": prompts[0]["prompt_token_ids"],
            "keys": sorted(prompts[0]["multi_modal_data"]["image"]),
            "pixel_values": [
                prompts[0]["multi_modal_data"]["image"]["pixel_values"].dtype.name,
                list(prompts[0]["multi_modal_data"]["image"]["pixel_values"].shape),
            ],
        }
        """,
    )
    assert values["count"] == 6, "50 x 70 pads to 64 x 96: 2 rows of 3 windows"
    assert values["first"] == {
        "prompt_token_ids": [1],
        "keys": ["pixel_values"],
        "pixel_values": ["float32", [6, 32, 32]],
    }


def test_a_file_under_the_allowed_root_round_trips_with_its_geo_tags(prithvi_overlay, tmp_path):
    from fixtures.generators.geotiff import make_geotiff

    make_geotiff(tmp_path / "tile.tif", height=40, width=33, seed=3)
    values = run_processor(
        prithvi_overlay,
        """
        request = {"data": "tile.tif", "data_format": "path", "out_data_format": "b64_json"}
        _, response = round_trip(request, "file")
        mask, geo = decode(response)
        probe.result["shape"] = list(mask.shape)
        probe.result["geo"] = geo
        """,
        env={ROOT_ENV: str(tmp_path)},
    )
    assert values == {"shape": [40, 33], "geo": [33550, 33922, 34735]}


def test_concurrent_requests_keep_their_own_layout(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        from prithvi_io_processor.imaging import encode_geotiff, synthetic_scene
        def request(h, w):
            tiff = encode_geotiff(synthetic_scene(height=h, width=w, seed=h))
            return {"data": base64.b64encode(tiff).decode(), "data_format": "b64_json",
                    "out_data_format": "b64_json"}
        small, large = request(20, 30), request(70, 40)
        small_prompts = processor.pre_process(processor.parse_data(small), request_id="small")
        large_prompts = processor.pre_process(processor.parse_data(large), request_id="large")
        large_out = processor.post_process(cls.conformance_fake_outputs(large_prompts), "large")
        small_out = processor.post_process(cls.conformance_fake_outputs(small_prompts), "small")
        probe.result["shapes"] = [list(decode(small_out)[0].shape), list(decode(large_out)[0].shape)]
        """,
    )
    assert values["shapes"] == [[20, 30], [70, 40]]


def test_the_async_variants_give_the_same_result_from_unordered_outputs(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        import asyncio
        sample = cls.conformance_sample_request()
        _, sync_response = round_trip(sample, "sync")
        async def main():
            prompts = await processor.pre_process_async(processor.parse_data(sample), "async")
            outputs = list(enumerate(cls.conformance_fake_outputs(prompts)))
            async def finished():
                for pair in reversed(outputs):
                    yield pair
            return await processor.post_process_async(finished(), request_id="async")
        probe.result["same"] = asyncio.run(main()) == sync_response
        """,
    )
    assert values["same"] is True


def test_post_process_accepts_torch_tensors(prithvi_overlay):
    pytest.importorskip("torch")
    values = run_processor(
        prithvi_overlay,
        """
        import torch
        sample = cls.conformance_sample_request()
        prompts, numpy_response = round_trip(sample, "numpy")
        prompts = processor.pre_process(processor.parse_data(sample), request_id="torch")
        outputs = cls.conformance_fake_outputs(prompts)
        for output in outputs:
            output.outputs.data = torch.from_numpy(output.outputs.data).to(torch.float16)
        probe.result["same"] = processor.post_process(outputs, "torch") == numpy_response
        """,
    )
    assert values["same"] is True


def test_pre_process_accepts_the_raw_request_dict_as_the_offline_path_sends_it(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        probe.result["count"] = len(processor.pre_process(cls.conformance_sample_request()))
        """,
    )
    assert values["count"] == 6


def test_processing_errors_are_value_errors_that_say_what_to_do(prithvi_overlay):
    values = run_processor(
        prithvi_overlay,
        """
        sample = cls.conformance_sample_request()
        prompts = processor.pre_process(processor.parse_data(sample), request_id="a")
        probe.result["duplicate"] = error(lambda: processor.pre_process(sample, request_id="a"))
        probe.result["short"] = error(
            lambda: processor.post_process(cls.conformance_fake_outputs(prompts)[:2], "a"))
        probe.result["unknown"] = error(lambda: processor.post_process([], "never-seen"))
        probe.result["malformed"] = error(lambda: processor.parse_data("a string"))
        """,
    )
    assert "already being processed" in values["duplicate"]
    assert "cut into 6 windows but 2 outputs came back" in values["short"]
    assert "call pre_process with the same request_id" in values["unknown"]
    assert "must be a dict" in values["malformed"]


def test_the_entry_function_imports_nothing_heavy(prithvi_overlay):
    result = run_probe(
        code(
            """
            import sys
            from prithvi_io_processor import register_prithvi
            probe.result["qualname"] = register_prithvi()
            probe.result["heavy"] = sorted({"numpy", "tifffile", "torch"} & set(sys.modules))
            """
        ),
        overlay=prithvi_overlay,
    )
    assert result.values == {
        "qualname": "prithvi_io_processor.prithvi_processor.PrithviMultimodalDataProcessor",
        "heavy": [],
    }, result.describe()
